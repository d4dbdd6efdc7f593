"""servelab — the runnable code of 「高效推理與服務」 (Efficient LLM Inference and Serving).

Every lesson page under ``docs/`` includes its code from a module of this package; the mirror rule
(``docs/<track>/<lab>/<lesson>.md`` ↔ ``servelab/<track>/<lab>/<lesson>.py`` ↔
``tests/<track>/<lab>/test_<lesson>.py`` ↔ the lesson notebook) is defined in :mod:`servelab.book.tree`.
"""

__version__ = "0.1.0"
