"""The model zoo: tiny Hugging Face architectures run through ``tfx.factorize`` end to end."""
