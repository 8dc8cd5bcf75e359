"""Tests of distill.data: one package per data set, and the bad-data messages of all three."""
