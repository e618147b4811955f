"""Datasets: download, synthetic stand-ins, preparation into arrays, and the in-memory loader."""
