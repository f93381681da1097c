"""The export formats, label sources and columns, and how trainers read a tie."""

from __future__ import annotations

from fergi.schema import AU_NAMES

#: The export formats (``fergi export-labels --format``).
FORMATS = ("pickapic", "hpdv2", "hf", "jsonl")
#: The label sources, each kept apart (``--source``).
SOURCES = ("reactions", "integrated", "ranking")
#: What becomes of a pair the model abstains on: left out, or a 0.5/0.5 tie (``--abstentions``).
ABSTENTIONS = ("drop", "tie")
SALT_NAME = ".fergi_salt"
WITHDRAWN_NAME = "withdrawn.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FEATURE_COLUMNS = tuple(f"{au}_activation_value" for au in AU_NAMES)
#: Columns of a label chunk, the table that flows from label making to the writers.
LABEL_COLUMNS = ("participant", "session", "image_a", "image_b", "preferred", "score_difference",
                 "confidence", "confident", "label_source", "normalization", "rank_a", "rank_b")

#: The Pick-a-Pic v2 columns, in this order and with these types (its dataset card:
#: ``jpg_*`` binary JPEG bytes, ``label_*`` float64 with 0.5/0.5 for a tie,
#: ``user_id``/``ranking_id`` int64, ``created_at`` timestamp[ns]); fergi's own after them.
PICKAPIC_COLUMNS = (
    ("caption", "string"), ("jpg_0", "binary"), ("jpg_1", "binary"),
    ("label_0", "float64"), ("label_1", "float64"), ("are_different", "bool"),
    ("has_label", "bool"), ("best_image_uid", "string"), ("image_0_uid", "string"),
    ("image_1_uid", "string"), ("model_0", "string"), ("model_1", "string"),
    ("user_id", "int64"), ("ranking_id", "int64"), ("created_at", "timestamp[ns]"),
)
FERGI_COLUMNS = (("label_source", "string"), ("confidence", "float64"),
                 ("participant", "string"), ("session", "int64"))

#: How the trainers that read these formats treat a 0.5/0.5 tie, as their code does it
#: (checked in diffusers 58eb52c0 and SalesforceAIResearch/DiffusionDPO 5233e759).
TIE_READERS = (
    ("diffusers' Diffusion-DPO example (examples/research_projects/diffusion_dpo/"
     "train_diffusion_dpo.py, and train_diffusion_dpo_sdxl.py)",
     "misreads a tie: `preprocess_train` swaps the two images only `if label_0 == 0`, so a "
     "0.5/0.5 row trains as \"jpg_0 preferred\""),
    ("the original Diffusion-DPO train.py (SalesforceAIResearch/DiffusionDPO)",
     "misreads a tie unless the dataset name contains \"pickapic\": only then does it drop "
     "rows whose label_0 is not 0 or 1; otherwise it flips the pair only when label_0 == 0"),
    ("HPSv2's trainer (HPDDataset + HPSLoss, hpdv2 format)",
     "reads a tie as a tie: HPSLoss weighs the two images' cross-entropies by "
     "human_preference, 0.5 each"),
)
