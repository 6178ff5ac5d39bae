"""The record: Optuna storage on SQLite or PostgreSQL, its URL, and the campaign records in it."""

from storage.backend import ensure_schema, exclusive, open_storage
from storage.errors import CampaignNotFound, StorageError, StudyNotFound
from storage.url import mask_url, resolve_url

__all__ = [
    "CampaignNotFound",
    "StorageError",
    "StudyNotFound",
    "ensure_schema",
    "exclusive",
    "mask_url",
    "open_storage",
    "resolve_url",
]
