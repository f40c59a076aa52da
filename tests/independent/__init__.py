"""A second, independent KX/1 implementation, for interoperability tests.

Written from ``docs/spec/kx1.rst`` alone; it imports nothing from
``keyexchanged``, so that a misreading of the specification shared by the
two would have to be made twice.
"""
