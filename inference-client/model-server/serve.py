"""Serves a GGUF model with llama.cpp's OpenAI-compatible server (the `xllamacpp` wheel) on 127.0.0.1.

Started by `serve.sh`, which installs the wheel and the model first. Prints `listening <url>` once the server
answers, then serves until SIGTERM or SIGINT.
"""

import argparse
import signal
import sys

import xllamacpp


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="path of the GGUF file")
    parser.add_argument("--alias", default="smollm2", help="model name clients send")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens of each sequence")
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.parallel * args.ctx_per_slot
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    # One KV buffer per sequence: a unified buffer lets sequences share a prefix, but every decoding step then
    # attends over all of it, and it slowed decoding tenfold as it filled. Each sequence keeps the prefix of the
    # style it served last, and the client sends one style per batch.
    server = xllamacpp.Server(params)
    print(f"listening {server.listening_address}", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    return 0


if __name__ == "__main__":
    sys.exit(main())
