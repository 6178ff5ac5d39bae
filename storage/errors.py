"""Domain errors of the record keeper. The CLI turns each into one line and an exit status."""


class StorageError(Exception):
    """The storage cannot be reached or used (bad URL, unreachable server, unreadable secret)."""


class StudyNotFound(StorageError):
    """No study (stage) of that name exists in the storage."""


class CampaignNotFound(StorageError):
    """No campaign of that name exists in the storage."""


class DatabaseUnavailable(StorageError):
    """The database could not be reached or answered with an error: it may come back, so
    ``backend.retrying`` tries again; past its deadline this is the one line a user sees."""
