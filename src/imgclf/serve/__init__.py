"""The prediction service (`imgclf serve`): a FastAPI app (`app.py`), its web page
(`page.html`) and its benchmark (`bench.py`, `imgclf bench-serve`)."""
