"""Runs OpenAI Batch API calls against fanoutd's gateway with the official SDK,
changing nothing but base_url and api_key, as a user's code would.

    python batch_through_gateway.py MODE [options]

Modes (each prints one JSON object on stdout, the test asserts on it):
  run       upload N lines, create a batch, poll retrieve until it ends,
            download the output and error files, report every custom_id
  cancel    a slow batch, cancelled once some lines completed
  malformed upload a file with a bad line; report the error
  wrong-key one call with a wrong key; report the error

The client talks TCP (--base-url, --api-key) or a Unix socket (--socket).
"""
import argparse
import json
import sys
import time

import openai

try:  # the SDK's HTTP library: httpx2 in recent releases, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx


def client(args):
    if args.socket:
        transport = httpx.HTTPTransport(uds=args.socket)
        return openai.OpenAI(base_url="http://fanout/v1", api_key="unused", http_client=httpx.Client(transport=transport))
    return openai.OpenAI(base_url=args.base_url, api_key=args.api_key)


def lines(count, prefix, delay_ms=0, extra=None):
    out = []
    for i in range(count):
        body = {"model": "stub-model", "messages": [{"role": "user", "content": f"Hello {i}"}]}
        if delay_ms:
            body["stub_delay_ms"] = delay_ms
        if extra and i in extra:
            body.update(extra[i])
        out.append(json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(out) + "\n").encode()


def wait(api, batch_id, timeout=120):
    deadline = time.time() + timeout
    while True:
        batch = api.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        if time.time() > deadline:
            raise SystemExit(f"batch {batch_id} still {batch.status} after {timeout} s")
        time.sleep(0.2)


def read_file(api, file_id):
    if not file_id:
        return []
    return [json.loads(line) for line in api.files.content(file_id).text.splitlines() if line.strip()]


def run(args):
    api = client(args)
    uploaded = api.files.create(file=("requests.jsonl", lines(args.count, args.prefix, extra={3: {"model": "unrouted"}} if args.unrouted else None)),
                                purpose="batch")
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"suite": "sdk"})
    batch = wait(api, batch.id)
    output = read_file(api, batch.output_file_id)
    errors = read_file(api, batch.error_file_id)
    listed = [b.id for b in api.batches.list(limit=100)]
    return {
        "file_id": uploaded.id, "file_lines": uploaded.bytes > 0, "batch_id": batch.id, "status": batch.status,
        "counts": batch.request_counts.model_dump(), "metadata": batch.metadata,
        "output_ids": [line["custom_id"] for line in output],
        "output_status": sorted({line["response"]["status_code"] for line in output}),
        "output_has_body": all(line["response"]["body"].get("object") == "chat.completion" for line in output),
        "error_lines": [{"custom_id": line["custom_id"], "error": line["error"]} for line in errors],
        "listed": listed,
        "content_roundtrip": api.files.content(uploaded.id).text.count("\n"),
    }


def cancel(args):
    api = client(args)
    uploaded = api.files.create(file=("slow.jsonl", lines(args.count, "slow-", delay_ms=300)), purpose="batch")
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 60
    while api.batches.retrieve(batch.id).request_counts.completed < 3:
        if time.time() > deadline:
            raise SystemExit("no request completed within 60 s")
        time.sleep(0.05)
    cancelling = api.batches.cancel(batch.id)
    batch = wait(api, batch.id)
    output = read_file(api, batch.output_file_id)
    return {"cancel_answer": cancelling.status, "status": batch.status, "counts": batch.request_counts.model_dump(),
            "output_ids": [line["custom_id"] for line in output]}


def malformed(args):
    api = client(args)
    data = lines(2, "ok-") + b'{"custom_id": "bad", "method": "POST", "url": "/v1/images", "body": {}}\nnot json\n'
    try:
        api.files.create(file=("bad.jsonl", data), purpose="batch")
    except openai.BadRequestError as error:
        return {"status": error.status_code, "message": error.body.get("message") if isinstance(error.body, dict) else str(error)}
    return {"status": 200}


def wrong_key(args):
    api = client(args)
    try:
        api.batches.list()
    except openai.AuthenticationError as error:
        return {"status": error.status_code, "type": error.body.get("type") if isinstance(error.body, dict) else None}
    return {"status": 200}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "cancel", "malformed", "wrong-key"])
    parser.add_argument("--base-url")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--socket")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--prefix", default="req-")
    parser.add_argument("--unrouted", action="store_true")
    args = parser.parse_args()
    result = {"run": run, "cancel": cancel, "malformed": malformed, "wrong-key": wrong_key}[args.mode](args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
