"""The record: Optuna storage on SQLite, PostgreSQL or MySQL/MariaDB, its URL, and the campaign
records in it.

Import what you need from its module (``storage.backend``, ``storage.records``, ...): this
package imports nothing itself, so a pure module that needs ``storage.states`` does not load
the database drivers.
"""
