"""The export's README.md (dataset card): how the labels were made, accuracy, consent."""

from __future__ import annotations

from fergi.preference.export._columns import TIE_READERS
from fergi.preference.export._labels import LabelPlan
from fergi.preference.export._summary import ExportSummary


def dataset_card(summary: ExportSummary) -> str:
    """The README.md of an export: how the labels were made, their accuracy, consent."""
    plan = summary.plan or LabelPlan((), False)
    s = summary.settings
    splits = summary.splits or ["train"]
    configs = []
    if summary.format == "pickapic":
        # Named explicitly, so that load_dataset(OUT) and the Hub find every split.
        configs = ["configs:", "- config_name: default", "  data_files:"]
        for split in splits:
            configs += [f"  - split: {split}", f"    path: data/{split}-*"]
    lines = [
        "---",
        "task_categories:", "- text-to-image",
        "tags:", "- human-preference", "- facial-expression", "- fergi",
        *configs,
        "---",
        "# Preference labels from facial reactions (fergi)",
        "",
        f"Exported by fergi in the `{summary.format}` format: {summary.n_rows} labelled image "
        f"pairs from {plan.participants} participants.",
        "",
        "## How the labels were made",
        "",
    ]
    explain = {
        "reactions": ("`reactions`: the participant's facial reaction to each image (AU "
                      "activation values, FERGI's valence score) decides which image of a pair "
                      "they preferred; `confidence` is the |difference of the two valence scores|."),
        "integrated": ("`integrated`: the ImageReward / PickScore / HPS v2 ensemble plus the "
                       "valence score (the FERGI paper's eq. 10), for pairs whose images have "
                       "those scores; `confidence` is the |difference of the integrated scores|."),
        "ranking": ("`ranking`: the participant's own ranking of the session's images (the "
                    "study's ground truth); `confidence` is 1."),
    }
    for source in plan.sources:
        lines.append(f"- {explain[source]} Rows: {summary.per_source.get(source, 0)}.")
    lines += ["", "Every row names its source in `label_source`; the sources are never merged."]
    if len(splits) > 1 or splits[0] != "train":
        lines += [f"Each source is its own split ({', '.join(f'`{x}`' for x in splits)}): trainers "
                  "read one split and ignore `label_source`, and two sources may label the same "
                  "pair differently, so their rows are never mixed. Pick one, e.g. diffusers' "
                  f"`--dataset_split_name={splits[0]}`."]
    lines += [""]
    if any(x in plan.sources for x in ("reactions", "integrated")):
        lines += [f"Model: {plan.model}.", ""]
        rule = ("every pair is labelled by the sign of its score difference, however small "
                "(`--all-pairs`)" if s.get("all_pairs") else
                f"a pair is labelled only when its |score difference| reaches the abstention "
                f"threshold: {plan.threshold_rule}")
        lines += [f"**Abstention rule**: {rule}."]
        if s.get("min_confidence") is not None:
            lines += [f"Pairs with a confidence below {s['min_confidence']} are also left out."]
        ties = (f"written as ties (`label_0` = `label_1` = 0.5, the Pick-a-Pic convention): "
                f"{summary.n_ties} rows; see \"Ties\" below" if s.get("abstentions") == "tie"
                else "left out")
        lines += [f"Pairs the rule rejects, and exact ties, are {ties}.", ""]
        lines += ["## Label accuracy against the participants' rankings", ""]
        mode = ("Each participant was labelled by the model fitted on the other participants "
                "only (strict leave-one-participant-out), so this is an honest estimate of "
                "the accuracy on new people." if plan.lopo else
                "The model was not refitted without these participants: if it was fitted on "
                "them (the shipped model was fitted on the public FERGI release), this figure "
                "is optimistic; export with `--lopo` for an honest one.")
        for source in plan.sources:
            if source == "ranking":
                continue
            entry = summary.agreement.get(source, {"agree": 0, "n": 0})
            pct = summary.agreement_percent(source)
            figure = (f"**{pct:.2f} %** ({entry['agree']} of {entry['n']} labelled pairs whose "
                      "images the participant ranked differently)" if pct is not None else
                      "not measurable (no ranked pair among the labelled ones)")
            lines.append(f"- `{source}` labels agree with the rankings: {figure}.")
        lines += ["", mode, ""]
        if plan.screened_out:
            lines += [f"Participants screened out of the reaction labels (unreliable AU4 at "
                      f"rest, FERGI Sec. 6.2.1): {len(plan.screened_out)}.", ""]
    if summary.n_ties:
        lines += ["## Ties", "",
                  f"{summary.n_ties} rows are 0.5/0.5 ties (`--abstentions tie`). Not every trainer "
                  "reads them as ties:", ""]
        lines += [f"- {who}: {what}." for who, what in TIE_READERS]
        lines += ["", "Before training a DPO model, keep the decided rows only, e.g. "
                  "`ds.filter(lambda row: row[\"label_0\"] in (0.0, 1.0))`, or export with "
                  "`--abstentions drop` (the default).", ""]
    lines += [
        "## Consent, privacy and sharing",
        "",
        "- Participant IDs are replaced by a salted hash (HMAC-SHA256) per study; the salt "
        "stays in the study folder and is never exported. `user_id` is derived from it.",
        "- Only the generated images and the labels are exported: no face video, no per-frame "
        "AU trace" + (" (each image's 12 AU activation values are included: `--with-features`)."
                      if s.get("with_features") else ", no AU value."),
        f"- Participants who withdrew are left out ({len(plan.withdrawn)} in this study: "
        "`withdrawn.json`, the `withdrawn` column of `study/sessions.csv`, or "
        "`--exclude-participants`).",
        "- Captions are the prompts the participants wrote: review them before publishing.",
        f"- Consent: {plan.consent or 'not recorded.'}",
        "- Sharing status: not cleared for public release by fergi; check that the consent "
        "covers publishing these labels, images and prompts before you share this dataset "
        "outside your group.",
        "",
        "## Columns",
        "",
    ]
    where = {"pickapic": ", ".join(f"`data/{x}-XXXXX-of-YYYYY.parquet`" for x in splits),
             "hf": ", ".join(f"split `{x}`" for x in splits),
             "hpdv2": ", ".join(f"`{x}.json`" for x in splits)}.get(summary.format)
    if where:
        lines += [f"Files: {where}.", ""]
    if summary.format in ("pickapic", "hf"):
        lines += ["The Pick-a-Pic v2 columns (`caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`, "
                  "`are_different`, `has_label`, `best_image_uid`, `image_0_uid`, `image_1_uid`, "
                  "`model_0`, `model_1`, `user_id`, `ranking_id`, `created_at`), then fergi's "
                  "`label_source`, `confidence`, `participant` (pseudonym) and `session`. "
                  "`label_0` = 1 means `jpg_0` was preferred.", ""]
    elif summary.format == "hpdv2":
        lines += ["HPD v2's training layout: a list of `{prompt, file_path: [a, b], "
                  "human_preference: [1, 0] | [0, 1] | [0.5, 0.5], label_source, confidence, "
                  "participant, session}`, `file_path` relative to `train/`, where the images "
                  "are (HPSv2's trainer: `--train-data OUT/train.json --train-folder OUT/train "
                  "--dataset-type HPD`).", ""]
    else:
        lines += ["`labels.jsonl`: one pair a line, as `fergi annotate` writes it, with "
                  "`participant` pseudonymised and `confidence` added.", ""]
    return "\n".join(lines)
