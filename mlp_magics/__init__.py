"""mlp_magics."""
