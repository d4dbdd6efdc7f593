"""Model folders the runtime can write into a Triton repository (``model.py`` files are templates)."""
