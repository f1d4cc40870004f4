"""Tests of the embedded broker and its protocols."""
