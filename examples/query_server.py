"""Query a running `hagmoe serve` with the Python clients it supports unchanged: huggingface_hub's
InferenceClient on the TGI routes and the official openai client on /v1.

    hagmoe serve &                                  # REST on :8000
    python examples/query_server.py [--url http://127.0.0.1:8000] [--max-new-tokens 20]
"""

from __future__ import annotations

import argparse

import openai
from huggingface_hub import InferenceClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="none", help="when the server has API keys")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    tgi = InferenceClient(base_url=args.url, api_key=args.api_key)
    text = tgi.text_generation(args.prompt, max_new_tokens=args.max_new_tokens)
    print(f"huggingface_hub text_generation: {text!r}")
    streamed = "".join(
        tgi.text_generation(args.prompt, max_new_tokens=args.max_new_tokens, stream=True)
    )
    print(f"huggingface_hub stream:          {streamed!r}")
    oai = openai.OpenAI(base_url=args.url + "/v1", api_key=args.api_key, max_retries=0)
    model = oai.models.list().data[0].id
    done = oai.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_new_tokens, temperature=0.0
    )
    print(f"openai completions:              {done.choices[0].text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
