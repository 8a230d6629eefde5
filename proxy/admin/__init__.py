"""Administration: accounts and API keys (`accounts.py`), and the admin HTTP API (`api.py`)."""
