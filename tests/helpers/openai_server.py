"""A loopback server that speaks the OpenAI completions HTTP API the way `vllm serve` does, backed by a real model.

GET /v1/models and POST /v1/completions with vLLM's request fields (prompt as text or token ids, n, max_tokens,
temperature, top_p, seed, stop, and the extensions stop_token_ids and return_token_ids). Generation is a plain
uncached greedy/sampling loop over the HF model, written independently of codellama_hf.generation, so a test that
compares the two back ends compares two implementations. Stop handling as vLLM: a stop id ends generation (its id is
kept in token_ids, not in the text); a stop string ends it and is cut from the text. `max_choices` imitates servers
(TGI) that return fewer than n choices. Requests are recorded in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers in JSON (the loopback servers of the generation and instruct tests)."""

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class CompletionsServer:
    def __init__(self, model, tokenizer, *, name: str = "loopback-model", max_choices: int | None = None):
        self.model, self.tokenizer, self.name, self.max_choices = model, tokenizer, name, max_choices
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    model = {"id": server.name, "object": "model", "created": 0, "owned_by": "vllm"}
                    return self._send(200, {"object": "list", "data": [model]})
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError", "code": 404}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/completions":
                    return self._send(404, {"error": {"message": "not found", "type": "NotFoundError", "code": 404}})
                if body.get("model") != server.name:
                    message = f"The model `{body.get('model')}` does not exist."
                    return self._send(404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
                with server.lock:
                    server.requests.append(body)
                    self._send(200, server.complete(body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @torch.inference_mode()
    def _one(self, prompt: list[int], body: dict, generator: torch.Generator) -> dict:
        stop_ids = set(body.get("stop_token_ids") or []) | {self.tokenizer.eos_token_id}
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        ids, generated, reason, text = list(prompt), [], "length", ""
        head = self.tokenizer.decode(prompt, skip_special_tokens=True)
        for _ in range(body.get("max_tokens") or 16):
            logits = self.model(torch.tensor([ids])).logits[0, -1].float()
            if (body.get("temperature") or 0) > 0:
                probs = torch.softmax(logits / body["temperature"], -1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(logits.argmax())
            ids.append(token)
            generated.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)[len(head) :]
            if token in stop_ids:
                reason = "stop"
                break
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                text, reason = text[: min(hits)], "stop"
                break
        choice = {"text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None}
        if body.get("return_token_ids"):
            choice["token_ids"] = generated
        return choice

    def complete(self, body: dict) -> dict:
        prompt = body["prompt"]
        if isinstance(prompt, str):
            prompt = self.tokenizer(prompt)["input_ids"]
        elif prompt and isinstance(prompt[0], list):
            raise ValueError("this loopback server takes one prompt per request")
        n = body.get("n") or 1
        generator = torch.Generator().manual_seed(body.get("seed") or 0)
        choices = [{"index": i, **self._one(prompt, body, generator)} for i in range(min(n, self.max_choices or n))]
        tokens = sum(len(self.tokenizer(c["text"], add_special_tokens=False)["input_ids"]) for c in choices)
        return {
            "id": f"cmpl-{len(self.requests)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": tokens, "total_tokens": len(prompt) + tokens},
        }
