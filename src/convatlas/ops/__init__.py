"""Operators: pure functions over tensors, no state (modules in ``convatlas.nn`` only hold hyperparameters)."""
