"""Query a running `hagmoe serve` with each client it supports: huggingface_hub's
InferenceClient on the TGI routes, the official openai client on /v1, and a gRPC stub.

    hagmoe serve &                                  # REST on :8000, gRPC on :50051
    python examples/query_server.py [--url http://127.0.0.1:8000] [--grpc 127.0.0.1:50051]
"""

from __future__ import annotations

import argparse

import grpc
import openai
from huggingface_hub import InferenceClient

from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:50051", help="gRPC address; '' skips it")
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
    if args.grpc:
        with grpc.insecure_channel(args.grpc) as channel:
            stub = pb_grpc.GenerationStub(channel)
            request = pb.GenerateRequest(
                text=args.prompt,
                parameters=pb.SamplingParameters(max_new_tokens=args.max_new_tokens),
            )
            auth = [("authorization", f"Bearer {args.api_key}")]
            reply = stub.Generate(request, timeout=30, metadata=auth)
            print(f"grpc Generate:                   {reply.text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
