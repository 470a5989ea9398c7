"""Coverage-guided fuzzing of the two sans-IO parsers that face the network: the SMTP core
(``smtp_target``) and the PROXY protocol reader (``proxy_target``).

Each target is a plain function ``run(data: bytes) -> None`` that raises ``AssertionError``
when an invariant breaks (or lets the core's own exception through), so the same code runs
under atheris (``python -m tests.fuzz TARGET``, see ``__main__.py``), replays the corpus in
``tests/corpus/`` under pytest, and turns a crash into a regression test. ``seeds.py``
regenerates the seed corpus from the transcripts of the tests. See docs/fuzzing.md.
"""
