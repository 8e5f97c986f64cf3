"""The Python adapter's pure parts: subject rules, traceparent handling, SRV ordering and
address parsing. (Everything that talks to a gateway is covered by the conformance suite
against real processes, and test_readme.py.)"""

import asyncio
import random
import unittest
from dataclasses import dataclass

import nexus_client as nx
from nexus_client.discovery import Target, order_srv
from nexus_client.headers import is_forced, span_id, span_report, with_traceparent


class SubjectRules(unittest.TestCase):
    def test_publish_subjects(self) -> None:
        for ok in ["orders.created", "a", "$nexus", "$nexusx.a", "ordres.ü", "a-b_c:d/e"]:
            nx.validate_publish_subject(ok)
        for bad in ["", "a..b", ".a", "a.", "a b", "a\tb", "orders.*", "orders.>", "$nexus.inbox.1", "x" * 513]:
            with self.assertRaises(nx.InvalidSubjectError, msg=bad):
                nx.validate_publish_subject(bad)

    def test_patterns(self) -> None:
        for ok in ["orders.*", "orders.>", "*.created.>", ">", "*"]:
            nx.validate_pattern(ok)
        for bad in ["a.>.b", "a*", ">>", "a..b", "$nexus.x"]:
            with self.assertRaises(nx.InvalidSubjectError, msg=bad):
                nx.validate_pattern(bad)

    def test_matching_table_of_the_protocol(self) -> None:
        table = [
            ("orders.created", "orders.created", True),
            ("orders.created", "orders.created.eu", False),
            ("orders.created", "Orders.created", False),
            ("orders.*", "orders.x", True),
            ("orders.*", "orders", False),
            ("orders.*", "orders.a.b", False),
            ("orders.>", "orders.a.b.c", True),
            ("orders.>", "orders", False),
            ("*.created.>", "orders.created.eu", True),
            ("*.created.>", "orders.created", False),
            (">", "anything.at.all", True),
        ]
        for pattern, subject, want in table:
            self.assertEqual(nx.subject_matches(pattern, subject), want, (pattern, subject))


class Traceparent(unittest.TestCase):
    def test_fresh_values_are_valid(self) -> None:
        for _ in range(100):
            self.assertTrue(nx.is_valid_traceparent(nx.new_traceparent()))

    def test_validity(self) -> None:
        self.assertTrue(nx.is_valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ]:
            self.assertFalse(nx.is_valid_traceparent(bad), bad)

    def test_kept_when_given_and_child_of_the_current_context(self) -> None:
        given = [("TraceParent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
        self.assertEqual(with_traceparent(given), given)
        token = nx.current_traceparent.set("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        try:
            ((key, value),) = with_traceparent([])
            self.assertEqual(key, "traceparent")
            self.assertEqual(value.split("-")[1], "4bf92f3577b34da6a3ce929d0e0e4736")
            self.assertNotEqual(value.split("-")[2], "00f067aa0ba902b7")
        finally:
            nx.current_traceparent.reset(token)

    def test_span_reports_for_forced_traces(self) -> None:
        self.assertTrue(is_forced([("Nexus-Trace", " TRUE ")]))
        self.assertFalse(is_forced([("nexus-trace", "0")]))
        self.assertFalse(is_forced([]))
        self.assertEqual(span_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), "00f067aa0ba902b7")
        self.assertEqual(span_id("garbage"), "")
        self.assertEqual(
            span_report("server", "handle a;b=c", "00f067aa0ba902b7", "00000000000000b2", 17, 250),
            "kind=server;name=handle a,b:c;span=00f067aa0ba902b7;parent=00000000000000b2;start_us=17;"
            "duration_us=250;lang=python",
        )


@dataclass
class Srv:
    priority: int
    weight: int
    name: str


class Discovery(unittest.TestCase):
    def test_priority_first_then_weighted(self) -> None:
        records = [Srv(20, 1, "late"), Srv(10, 90, "heavy"), Srv(10, 10, "light"), Srv(10, 0, "zero")]
        firsts = {"heavy": 0, "light": 0, "zero": 0}
        rng = random.Random(7)
        for _ in range(2000):
            order = [r.name for r in order_srv(records, rng)]
            self.assertEqual(order[-1], "late")
            self.assertEqual(sorted(order[:3]), ["heavy", "light", "zero"])
            firsts[order[0]] += 1
        self.assertGreater(firsts["heavy"], 1600)
        self.assertGreater(firsts["light"], 100)
        self.assertEqual(firsts["zero"], 0)

    def test_addresses(self) -> None:
        t = Target("nexus+srv://us-east.nexus.local?dns=127.0.0.1:5353")
        self.assertTrue(t.is_srv)
        self.assertEqual(t.srv_name, "_nexus._tcp.us-east.nexus.local.")
        self.assertEqual(t.dns, ("127.0.0.1", 5353))
        direct = Target("http://127.0.0.1:7422")
        self.assertEqual([e.address for e in asyncio.run(direct.endpoints())], ["127.0.0.1:7422"])
        self.assertFalse(Target("127.0.0.1:7422").is_srv)
        for bad in ["ftp://x:1", "http://nohost", "nexus+srv://nodots"]:
            with self.assertRaises(nx.InvalidAddressError, msg=bad):
                Target(bad)


if __name__ == "__main__":
    unittest.main()
