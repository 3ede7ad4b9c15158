"""Evaluators beyond the built-in tasks: Hugging Face models scored on local files (:mod:`wsa_cli.evaluation.hf`)."""
