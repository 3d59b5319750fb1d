"""Config groups shipped inside the package, so a pip install has every recipe and default."""
