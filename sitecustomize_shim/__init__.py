"""Holds sitecustomize.py, the directory mirror-py puts on an interposed process's PYTHONPATH."""
