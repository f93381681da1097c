"""The ``jobs`` table as a queue: queue a job, or put a failed one back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fergi.study.store import Job

#: The job kinds, each polled by its own thread of :class:`fergi.study.Worker`.
JOB_KINDS = ("generate", "clips", "process")


def enqueue(db: Session, session_id: int, kind: str, *, revive: bool = True) -> Job:
    """Queue a job (the caller commits); an already queued/running job of the kind is reused.

    A ``clips`` job is different: new video may have arrived after a running one read
    the chunks, so a running one gets a queued successor, and a finished one is queued
    again (one row per session, its stages the images' status). A failed one is queued
    again only with ``revive`` (a new image was presented), not for every new chunk, so
    a broken recording is not decoded again each second.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    if kind == "clips":
        jobs = db.scalars(
            select(Job).where(Job.session_id == session_id, Job.kind == kind).order_by(Job.id.desc())
        ).all()
        queued = next((j for j in jobs if j.status == "queued"), None)
        if queued is not None:
            return queued
        if jobs and jobs[0].status == "failed" and not revive:
            return jobs[0]
        if jobs and jobs[0].status != "running":
            job = jobs[0]
            job.status, job.error, job.finished_at, job.attempts = "queued", None, None, 0
            return job
        job = Job(session_id=session_id, kind=kind, status="queued", stages=dict(jobs[0].stages) if jobs else {})
        db.add(job)
        return job
    job = db.scalar(
        select(Job).where(
            Job.session_id == session_id, Job.kind == kind, Job.status.in_(("queued", "running"))
        )
    )
    if job is None:
        job = Job(session_id=session_id, kind=kind, status="queued", stages={})
        db.add(job)
    return job


def retry_job(db: Session, job: Job) -> Job:
    """Put a failed (or finished) job back in the queue (the caller commits)."""
    job.status = "queued"
    job.error = None
    job.stages = {}
    job.finished_at = None
    return job


