"""The ``mdlm-fast`` command line: the entry (app.py), shared loaders and validators, one module per subcommand group."""
