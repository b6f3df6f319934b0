"""lm-eval's official task configs fed from local files instead of the Hugging Face hub."""
