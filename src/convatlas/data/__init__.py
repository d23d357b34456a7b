"""Datasets and transforms, all from files installed through the package registries."""
