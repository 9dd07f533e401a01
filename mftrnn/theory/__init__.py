"""Mean-field theory (SymPy -> NumPy; never imports torch)."""
