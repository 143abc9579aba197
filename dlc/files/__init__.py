"""The ground floor for files: atomic writes (atomic) and bounded reads of user-supplied files
(untrusted)."""
