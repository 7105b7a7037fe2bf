"""Tests of the viewer server (viewer/)."""
