"""The measured systems, one module each; bench/systems/base.py says what they provide."""
