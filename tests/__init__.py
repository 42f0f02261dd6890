"""The test suite, one folder per part of mdlm_fast (package/ for the whole package, helpers/ shared).

Every folder is a package, so pytest imports a test file as ``tests.<part>.test_x`` with the
repository root on ``sys.path``: file names may repeat across folders, and helpers are imported as
``tests.helpers.<module>`` whether the whole suite runs or a single file.
"""
