"""Unit tests of provgate_torch; run from examples/pytorch with
/usr/bin/python3 -m unittest discover -s tests -t . (pytorch_test.go does)."""
