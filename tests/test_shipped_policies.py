"""The shipped use-case policies (policies/): a table of sample requests per use case
→ the action, rule and message the reviewer (or, on deny, the agent) reads."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from proxy.model import Action, Agent, AgentRequest
from proxy.policy import EmbeddedEngine, PolicyLoadError, build_input, connect_input, run_tests

POLICIES = Path(__file__).resolve().parent.parent / "policies"
NOW = 1795000000.0
BILLING = Agent("billing-agent", "10.0.0.7")
FORM = (("Content-Type", "application/x-www-form-urlencoded"),)


def req(method: str, url: str, body: Any = None, headers: tuple[tuple[str, str], ...] = ()) -> AgentRequest:
    scheme, rest = url.split("://", 1)
    authority, _, target = rest.partition("/")
    host, _, port = authority.partition(":")
    raw = b""
    if isinstance(body, bytes):
        raw = body
    elif body is not None:
        raw = json.dumps(body).encode()
        headers = (("Content-Type", "application/json"), *headers)
    default = 443 if scheme == "https" else 80
    return AgentRequest(method, scheme, host, int(port or default), "/" + target, headers, raw)


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine.load([POLICIES])


def decide(engine: EmbeddedEngine, request: AgentRequest, agent: Agent = BILLING) -> Any:
    return asyncio.run(engine.decide(build_input(request, agent, NOW)))


def raw_mail(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


SG = "https://api.sendgrid.com/v3/mail/send"
STRIPE = "https://api.stripe.com"
SQL = "https://db-gateway.example.com/query"

# (request, agent, action, rule, message: exact, or "...text" for a part of it, or None)
CASES: dict[str, list[tuple[AgentRequest, Agent, Action, str, str | None]]] = {
    "email": [
        (req("POST", SG, {"personalizations": [{"to": [{"email": "ann@example.com"}]}], "subject": "Invoice 42"}),
         BILLING, Action.HOLD, "email.send",
         'billing-agent wants to send "Invoice 42" to ann@example.com via SendGrid'),
        (req("POST", SG, {"personalizations": [{"to": [{"email": "ann@example.com"}], "bcc": [{"email": "eve@evil.test"}]}], "subject": "Hi"}),
         BILLING, Action.HOLD, "email.external",
         ('billing-agent wants to send "Hi" to ann@example.com, eve@evil.test via SendGrid'
         " — 1 recipient outside your domains: eve@evil.test")),
        (req("POST", "https://api.mailgun.net/v3/mg.example.com/messages",
             b"to=Ann+%3Cann%40example.com%3E%2C+carl%40x.io&to=dan%40y.io&subject=Hello", FORM),
         BILLING, Action.HOLD, "email.external", "...2 recipients outside your domains: carl@x.io, dan@y.io"),
        (req("POST", "https://api.postmarkapp.com/email", {"To": "ann@sales.example.com", "Subject": "Reset"}),
         BILLING, Action.HOLD, "email.send",
         'billing-agent wants to send "Reset" to ann@sales.example.com via Postmark'),
        (req("POST", "https://gmail.googleapis.com/gmail/v1/users/me/messages/send",
             {"raw": raw_mail("To: ann@example.com\r\nCc: Bob <bob@other.org>\r\nSubject: Numbers\r\n\r\nTo: hidden@evil.test\r\n")}),
         BILLING, Action.HOLD, "email.external",
         ('billing-agent wants to send "Numbers" to ann@example.com, bob@other.org via Gmail'
         " — 1 recipient outside your domains: bob@other.org")),
        (req("POST", "https://gmail.googleapis.com/gmail/v1/users/me/messages/send", {"raw": "!!"}),
         BILLING, Action.HOLD, "email.send",
         "billing-agent wants to send an email without a subject to recipients the proxy cannot read via Gmail"),
        (req("POST", "https://graph.microsoft.com/v1.0/me/sendMail",
             {"message": {"subject": "Lunch", "toRecipients": [{"emailAddress": {"address": "x@partner.test"}}]}}),
         Agent("anonymous", "10.0.0.8"), Action.HOLD, "email.external",
         ('an anonymous agent wants to send "Lunch" to x@partner.test via Microsoft Graph'
         " — 1 recipient outside your domains: x@partner.test")),
        (req("POST", "https://graph.microsoft.com/v1.0/me/events", {}), BILLING, Action.HOLD,  # email host: other writes held
         "sensitive.write", "billing-agent wants to POST https://graph.microsoft.com/v1.0/me/events on Microsoft Graph"),
        (req("POST", "https://api.sendgrid.com/v3/templates", {"name": "t"}), BILLING, Action.HOLD,
         "sensitive.write", "billing-agent wants to POST https://api.sendgrid.com/v3/templates on SendGrid"),
        (req("GET", "https://api.sendgrid.com/v3/stats"), BILLING, Action.ALLOW, "default", ""),
    ],
    "payments": [
        (req("GET", STRIPE + "/v1/charges?limit=3"), BILLING, Action.ALLOW, "payments.read", ""),
        (req("POST", STRIPE + "/v1/charges", {"amount": 5000, "currency": "usd", "customer": "cus_123"}),
         BILLING, Action.ALLOW, "payments.small",
         "billing-agent may charge 50.00 USD for customer cus_123 via Stripe (within the limit)"),
        (req("POST", STRIPE + "/v1/charges", {"amount": 25000, "currency": "usd", "customer": "cus_123"}),
         BILLING, Action.HOLD, "payments.charge",
         "billing-agent wants to charge 250.00 USD for customer cus_123 via Stripe"),
        (req("POST", STRIPE + "/v1/payment_intents", b"amount=19999&currency=eur", FORM),
         BILLING, Action.HOLD, "payments.charge", "billing-agent wants to charge 199.99 EUR via Stripe"),
        (req("POST", STRIPE + "/v1/charges", {"amount": 20000, "currency": "jpy"}),
         BILLING, Action.HOLD, "payments.charge", "billing-agent wants to charge 20000 JPY via Stripe"),
        (req("POST", STRIPE + "/v1/transfers", {"amount": 1500000, "currency": "usd", "destination": "acct_9"}),
         BILLING, Action.DENY, "payments.over_limit",
         ("refused: billing-agent may not transfer 15000.00 USD via Stripe"
         " (the limit for agents is 10000 USD; use another channel)")),
        (req("POST", STRIPE + "/v1/charges/ch_1/refunds", {}), BILLING, Action.HOLD, "payments.refund",
         ("billing-agent wants to refund via Stripe; the request states no amount the policy can read:"
         " POST https://api.stripe.com/v1/charges/ch_1/refunds")),
        (req("POST", STRIPE + "/v1/charges", {"amount": "50 dollars", "currency": "usd"}),
         BILLING, Action.HOLD, "payments.charge", "...the request states no amount the policy can read: POST https://api.stripe.com/v1/charges"),
        (req("DELETE", STRIPE + "/v1/customers/cus_123"), BILLING, Action.HOLD, "payments.write",
         "billing-agent wants to DELETE https://api.stripe.com/v1/customers/cus_123 on Stripe"),
        (req("POST", "https://api-m.paypal.com/v2/checkout/orders",
             {"purchase_units": [{"amount": {"currency_code": "USD", "value": "150.00"}}, {"amount": {"currency_code": "USD", "value": "10.50"}}]}),
         BILLING, Action.HOLD, "payments.charge", "billing-agent wants to charge 160.50 USD via PayPal"),
        (req("POST", "https://api-m.paypal.com/v1/payments/payouts",
             {"items": [{"amount": {"currency": "EUR", "value": "20000.00"}}]}),
         BILLING, Action.DENY, "payments.over_limit", "...may not pay out 20000.00 EUR via PayPal..."),
    ],
    "database": [
        (req("POST", SQL, {"sql": "SELECT * FROM orders WHERE id = 7"}), BILLING, Action.ALLOW, "database.read", ""),
        (req("POST", SQL, {"sql": "/* report */ select 1 -- drop later"}), BILLING, Action.ALLOW, "database.read", ""),
        (req("POST", SQL, {"sql": "DELETE FROM orders WHERE id = 7"}), BILLING, Action.HOLD, "database.write",
         "billing-agent wants to run on the SQL gateway (db-gateway.example.com): DELETE FROM orders WHERE id = 7"),
        (req("POST", SQL, {"sql": "INSERT INTO notes VALUES ('drop me a line')"}), BILLING, Action.HOLD, "database.write", None),
        (req("POST", SQL, {"sql": "drop table orders"}), BILLING, Action.DENY, "database.destructive",
         "refused: DROP and TRUNCATE are not allowed through the proxy; billing-agent sent: drop table orders"),
        (req("POST", SQL, {"sql": "SELECT 1; TRUNCATE orders"}), BILLING, Action.DENY, "database.destructive", None),
        (req("GET", "https://abc.supabase.co/rest/v1/orders?id=eq.7"), BILLING, Action.ALLOW, "database.read", ""),
        (req("PATCH", "https://abc.supabase.co/rest/v1/orders?id=eq.7&select=id", b'{"paid":true}', (("Content-Type", "application/json"),)),
         BILLING, Action.HOLD, "database.write",
         'billing-agent wants to run on Supabase (abc.supabase.co): UPDATE orders SET {"paid":true} WHERE id=eq.7'),
        (req("DELETE", "https://abc.supabase.co/rest/v1/orders"), BILLING, Action.DENY, "database.destructive",
         "refused: a DELETE without a filter removes every row of orders on abc.supabase.co"),
        (req("POST", "https://postgrest.example.com/rpc/close_month"), BILLING, Action.HOLD, "database.write",
         "billing-agent wants to run on PostgREST (postgrest.example.com): CALL close_month()"),
        (req("POST", "https://hasura.example.com/v1/graphql", {"query": "query { orders { id } }"}),
         BILLING, Action.ALLOW, "database.read", ""),
        (req("POST", "https://hasura.example.com/v1/graphql", {"query": "mutation { delete_orders(where: {}) { affected_rows } }"}),
         BILLING, Action.HOLD, "database.write",
         "...: GraphQL mutation { delete_orders(where: {}) { affected_rows } }"),
        (req("POST", "https://hasura.example.com/v2/query", {"type": "run_sql", "args": {"sql": "TRUNCATE orders"}}),
         BILLING, Action.DENY, "database.destructive", None),
    ],
    "posting": [
        (req("POST", "https://api.x.com/2/tweets", {"text": "We are live!"}), BILLING, Action.HOLD, "posting.post",
         'billing-agent wants to post on X: "We are live!"'),
        (req("POST", "https://api.twitter.com/1.1/statuses/update.json", b"status=Hello+world", FORM),
         BILLING, Action.HOLD, "posting.post", 'billing-agent wants to post on X: "Hello world"'),
        (req("POST", "https://api.x.com/2/tweets", {"text": "Launch"}), Agent("marketing-agent", "10.0.0.9"),
         Action.HOLD, "posting.brand",
         'marketing-agent wants to post on X: "Launch" (from brand account marketing-agent: 2 approvals needed)'),
        (req("POST", "https://api.linkedin.com/rest/posts", {"author": "urn:li:organization:1000", "commentary": "Hiring"}),
         BILLING, Action.HOLD, "posting.brand", "...(from brand account urn:li:organization:1000: 2 approvals needed)"),
        (req("POST", "https://api.linkedin.com/v2/ugcPosts", {"author": "urn:li:person:7", "specificContent": {"com.linkedin.ugc.ShareContent": {"shareCommentary": {"text": "Hi"}}}}),
         BILLING, Action.HOLD, "posting.post", 'billing-agent wants to post on LinkedIn: "Hi"'),
        (req("POST", "https://slack.com/api/chat.postMessage", {"channel": "C123", "text": "deploy done"}),
         BILLING, Action.HOLD, "posting.post", 'billing-agent wants to post in Slack channel C123: "deploy done"'),
        (req("GET", "https://slack.com/api/chat.postMessage?channel=C0ANNOUNCE&text=hi"), BILLING, Action.HOLD,
         "posting.brand", '...post in Slack channel C0ANNOUNCE: "hi" (from brand account C0ANNOUNCE: 2 approvals needed)'),
        (req("POST", "https://slack.com/api/conversations.list"), BILLING, Action.ALLOW, "default", ""),
        (req("POST", "https://api.github.com/repos/octo/app/issues/12/comments", {"body": "LGTM"}), BILLING,
         Action.HOLD, "posting.post", 'billing-agent wants to comment on GitHub octo/app #12: "LGTM"'),
        (req("PATCH", "https://api.github.com/repos/acme/app/issues/comments/99", {"body": "edited"}), BILLING,
         Action.HOLD, "posting.brand", None),
        (req("POST", "https://api.github.com/repos/octo/app/pulls", {"title": "x"}), BILLING, Action.ALLOW, "default", ""),
    ],
    "default": [
        (req("GET", "https://example.com/v1/items?page=2"), BILLING, Action.ALLOW, "default", ""),
        (req("POST", "https://example.com/v1/charges", {"amount": 5000000, "currency": "usd"}), BILLING, Action.ALLOW, "default", ""),
        (req("POST", "https://stripe.com.evil.test/v1/charges", {"amount": 5000000, "currency": "usd"}), BILLING, Action.ALLOW, "default", ""),
        (req("POST", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"), BILLING, Action.HOLD, "sensitive.write",
         "billing-agent wants to POST https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json on Twilio"),
        (req("GET", "https://api.twilio.com/2010-04-01/Accounts"), BILLING, Action.ALLOW, "default", ""),
        (req("post", "http://API.Stripe.COM.:8080/v1/customers"), BILLING, Action.HOLD, "payments.write",
         "billing-agent wants to POST http://api.stripe.com:8080/v1/customers on Stripe"),
    ],
}

ROWS = [pytest.param(*row, id=f"{case}-{i}") for case, rows in CASES.items() for i, row in enumerate(rows)]


@pytest.mark.parametrize(("request_", "agent", "action", "rule", "message"), ROWS)
def test_sample_requests(engine: EmbeddedEngine, request_: AgentRequest, agent: Agent,
                         action: Action, rule: str, message: str | None) -> None:
    decision = decide(engine, request_, agent)
    assert (decision.action, decision.rule) == (action, rule), decision.message
    if message is not None and message.startswith("..."):
        assert message.strip(".") in decision.message
    elif message is not None:
        assert decision.message == message


SLASHED = [pytest.param(*row, id=f"{case}-{i}") for case, rows in CASES.items()
           for i, row in enumerate(rows) if row[2] is not Action.ALLOW and not row[0].path.endswith("/")]


@pytest.mark.parametrize(("request_", "agent", "action", "rule", "message"), SLASHED)
def test_a_trailing_slash_changes_no_decision(engine: EmbeddedEngine, request_: AgentRequest, agent: Agent,
                                              action: Action, rule: str, message: str | None) -> None:
    path, sep, query = request_.target.partition("?")
    slashed = AgentRequest(request_.method, request_.scheme, request_.host, request_.port,
                           path + "/" + sep + query, request_.headers, request_.body)
    decision = decide(engine, slashed, agent)
    assert (decision.action, decision.rule) == (action, rule), decision.message


def test_every_use_case_has_enough_samples() -> None:
    assert all(len(CASES[name]) >= 8 for name in ("email", "payments", "database", "posting"))


@pytest.mark.parametrize(("host", "expected"), [
    ("api.stripe.com", True), ("API.STRIPE.COM.", True), ("api.sendgrid.com", True),
    ("abc.supabase.co", True), ("slack.com", True), ("api.twilio.com", True),
    ("example.com", False), ("files.slack.com", False), ("a.b.supabase.co", False), ("stripe.com", False),
])
def test_intercept_only_hosts_that_may_be_held(engine: EmbeddedEngine, host: str, expected: bool) -> None:
    assert asyncio.run(engine.intercept(connect_input(host, 443, BILLING, NOW))) is expected


@pytest.mark.parametrize("host", ["api.stripe.com", "api.sendgrid.com", "example.com"])
def test_connect_itself_is_allowed(engine: EmbeddedEngine, host: str) -> None:
    assert decide_doc(engine, connect_input(host, 443, BILLING, NOW)).action is Action.ALLOW


def decide_doc(engine: EmbeddedEngine, doc: dict[str, Any]) -> Any:
    return asyncio.run(engine.decide(doc))


def test_hold_details(engine: EmbeddedEngine) -> None:
    brand = decide(engine, req("POST", "https://api.x.com/2/tweets", {"text": "x"}), Agent("marketing-agent", "a"))
    assert (brand.approvals, brand.grantable) == (2, False)
    charge = decide(engine, req("POST", STRIPE + "/v1/charges", {"amount": 25000, "currency": "usd"}))
    assert (charge.approvals, charge.grantable, charge.reviewers) == (1, False, ())


def test_data_changes_the_decision(tmp_path: Path) -> None:
    """Thresholds and domains live in data.yaml: an operator's edit takes effect."""
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    data = copy / "data.yaml"
    data.write_text(data.read_text().replace("default: {hold_above: 100,", "default: {hold_above: 1000,")
                    .replace("allow_internal: false", "allow_internal: true"))
    engine = EmbeddedEngine.load([copy])
    charge = decide(engine, req("POST", STRIPE + "/v1/charges", {"amount": 25000, "currency": "usd"}))
    assert (charge.action, charge.rule) == (Action.ALLOW, "payments.small")
    mail = decide(engine, req("POST", SG, {"personalizations": [{"to": [{"email": "ann@example.com"}]}], "subject": "x"}))
    assert (mail.action, mail.rule) == (Action.ALLOW, "email.internal")


def test_policy_tests_pass() -> None:
    results = run_tests([POLICIES])
    assert results and [r for r in results if not r.passed] == []
    assert {r.package for r in results} >= {"hitl.email_test", "hitl.payments_test", "hitl.database_test", "hitl.posting_test"}


def test_a_broken_copy_fails_its_tests(tmp_path: Path) -> None:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    data = copy / "data.yaml"
    data.write_text(data.read_text().replace("jpy: {hold_above", "xxx: {hold_above").replace(
        "default: {hold_above: 100,", "default: {hold_above: 100000,"))
    assert any(not r.passed for r in run_tests([copy]))
    (copy / "payments.rego").write_text("package hitl.payments\ndecide(r, a) := {\n")
    with pytest.raises(PolicyLoadError, match="payments.rego"):
        run_tests([copy])
