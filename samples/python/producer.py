"""A site's producer for recaptcha-annotator, in Python with confluent-kafka.

What a site does around reCAPTCHA Enterprise:
  1. right after assessments.create, record which assessment a correlation key belongs to
     (topic `assessments`, keyed by the correlation key);
  2. when the truth is known, emit the outcome under the same key: a login that passed two
     factors (topic `logins`), and weeks later a chargeback (topic `fraud-signals`).
The service joins the outcome to the assessment through the key and annotates it.

Run against the local stack (scripts/kafka.sh, `recaptcha-annotator sandbox`):
  python producer.py --brokers 127.0.0.1:9092 --endpoint http://127.0.0.1:8085 \
      --project 123456789 --api-key local-key
The contract is docs/EVENTS.md; `recaptcha-annotator validate` checks what this wrote.
"""

import argparse
import json
import urllib.request
import uuid
from datetime import datetime, timezone

from confluent_kafka import Producer


def now() -> str:
    """RFC 3339 in UTC, as the contract reads timestamps."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_assessment(endpoint: str, project: str, api_key: str) -> str:
    """assessments.create, as the site's backend calls it; returns the assessment's name."""
    body = json.dumps({"event": {"token": "sample-token", "siteKey": "sample-site-key"}}).encode()
    request = urllib.request.Request(
        f"{endpoint}/v1/projects/{project}/assessments",
        data=body,
        headers={"Content-Type": "application/json", "x-goog-api-key": api_key},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["name"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--endpoint", default="http://127.0.0.1:8085")
    parser.add_argument("--project", default="123456789")
    parser.add_argument("--api-key", default="local-key")
    parser.add_argument("--assessments-topic", default="assessments")
    parser.add_argument("--logins-topic", default="logins")
    parser.add_argument("--fraud-signals-topic", default="fraud-signals")
    parser.add_argument("--count", type=int, default=3, help="protected logins to simulate")
    parser.add_argument("-X", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka property, as kcat takes them (repeatable)")
    args = parser.parse_args()

    # Idempotent and acknowledged by every replica: a retried send is never a duplicate.
    config = {"bootstrap.servers": args.brokers, "enable.idempotence": True, "acks": "all"}
    config.update(kv.split("=", 1) for kv in args.extra)
    producer = Producer(config)
    failures = []

    def delivered(err, msg):
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    def send(topic: str, key: str, event: dict) -> None:
        producer.produce(topic, key=key, value=json.dumps(event), on_delivery=delivered)

    for _ in range(args.count):
        # 1. Right after assessments.create: the correlation key -> the assessment.
        name = create_assessment(args.endpoint, args.project, args.api_key)
        key = f"login-{uuid.uuid4().hex[:12]}"
        send(args.assessments_topic, key, {"key": key, "assessment": name, "created_at": now()})
        # 2. The login's outcome, under the same key: two factors passed.
        send(args.logins_topic, key, {
            "event_id": f"py-{uuid.uuid4()}", "outcome": "two_factor_passed",
            "occurred_at": now(), "key": key, "account_id": "u-42",
        })
        # 3. Weeks later, a chargeback for the payment made in that session.
        send(args.fraud_signals_topic, key, {
            "event_id": f"py-{uuid.uuid4()}", "outcome": "chargeback", "occurred_at": now(),
            "key": key, "account_id": "u-42",
            "transaction": {"event_type": "CHARGEBACK", "reason": "6005", "value": 12.5,
                            "event_time": now()},
        })
    remaining = producer.flush(30)
    if remaining or failures:
        raise SystemExit(f"not delivered: {remaining} left, failures: {failures}")
    print(f"python sample: {args.count} assessments, {2 * args.count} outcomes delivered")


if __name__ == "__main__":
    main()
