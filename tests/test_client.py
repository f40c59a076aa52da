"""The client's reading of ``HOST[:PORT]``: the default port and the
errors a user sees."""

from twisted.trial import unittest

from keyexchanged import client


class ParseServerTests(unittest.SynchronousTestCase):
    def test_the_default_port_is_51424(self):
        self.assertEqual(client.parse_server("localhost"), ("localhost", 51424))
        self.assertEqual(client.parse_server("[::1]"), ("::1", 51424))

    def test_a_port_given(self):
        self.assertEqual(client.parse_server("kx.example:1"), ("kx.example", 1))
        self.assertEqual(client.parse_server("[2001:db8::1]:65535"), ("2001:db8::1", 65535))

    def test_an_ipv6_address_without_brackets_is_all_host(self):
        self.assertEqual(client.parse_server("2001:db8::1"), ("2001:db8::1", 51424))

    def test_errors_name_the_text_and_what_is_wrong(self):
        refused = {}
        for text in ("[::1", "[::1]x", ":5", "h:port", "h:0", "h:65536"):
            try:
                client.parse_server(text)
            except ValueError as error:
                refused[text] = str(error)
        self.assertEqual(
            refused,
            {
                "[::1": "'[::1': unclosed [ in IPv6 address",
                "[::1]x": "'[::1]x': expected :PORT after ]",
                ":5": "':5': no host name",
                "h:port": "'h:port': the port must be a number",
                "h:0": "'h:0': the port must be from 1 to 65535",
                "h:65536": "'h:65536': the port must be from 1 to 65535",
            },
        )
