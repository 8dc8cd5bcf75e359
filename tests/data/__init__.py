"""Tests of the synthetic shapes data pipeline."""
