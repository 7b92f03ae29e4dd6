#!/usr/bin/env bash
# End-to-end check on a machine with a GPU and vLLM 0.33.0 installed (pip install -e ".[vllm,dev]"):
#   1. start the gateway with --engine vllm on a real base model,
#   2. train a small adapter with `lora-gateway train` and watch it go live, then check tools (required
#      and named), a JSON schema and logprobs through it on vLLM's structured outputs and hermes parser,
#   3. publish copies as several adapters and run the load generator across them,
#   4. run the same load against bare `vllm serve` with the same adapters, and compare.
# Targets (issue 5): gateway TTFT p50 within 5 % of bare vLLM, output throughput >= 95 %.
# Writes benchmarks/results/gpu_smoke.json and prints the comparison.
#   MODEL=Qwen/Qwen2.5-0.5B-Instruct bash benchmarks/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
PY=${PY:-python3}
WORK=$(mktemp -d)
GATEWAY_PORT=${GATEWAY_PORT:-8100}
VLLM_PORT=${VLLM_PORT:-8101}
PROMPTS=${PROMPTS:-200}
CONCURRENCY=${CONCURRENCY:-16}
ADAPTERS="smoke-1 smoke-2 smoke-3 smoke-4"
cleanup() { kill "${GATEWAY_PID:-}" "${VLLM_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

wait_ready() {  # URL
  for _ in $(seq 1 600); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "not ready: $1" >&2; return 1
}

echo "== gateway (--engine vllm) on $MODEL"
mkdir -p "$WORK/adapters"
$PY -m lora_gateway serve --engine vllm --model "$MODEL" --adapters-dir "$WORK/adapters" --port "$GATEWAY_PORT" \
  --max-lora-rank 16 --max-loras 4 --gpu-memory-utilization 0.5 --log-level warning &
GATEWAY_PID=$!
wait_ready "http://127.0.0.1:$GATEWAY_PORT/ready"

echo "== train an adapter and watch it go live"
started=$(date +%s.%N)
$PY -m lora_gateway train --base "$MODEL" --data examples/self_cognition.json --name smoke-1 --model-name Smoke \
  --model-author lora-gateway --adapters-dir "$WORK/adapters" --output-dir "$WORK/run" --epochs 3 --allow-small
until curl -sf "http://127.0.0.1:$GATEWAY_PORT/v1/models" | grep -q '"smoke-1"'; do sleep 0.2; done
echo "trained and live after $(echo "$(date +%s.%N) - $started" | bc) s"
curl -s "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "smoke-1", "messages": [{"role": "user", "content": "你是谁？"}], "temperature": 0}'
echo
$PY - "http://127.0.0.1:$GATEWAY_PORT/v1" <<'PYEOF'
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
tools = [{"type": "function", "function": {"name": "get_order_status", "parameters": {"type": "object",
          "properties": {"order_id": {"type": "string"}}, "required": ["order_id"], "additionalProperties": False}}}]
ask = [{"role": "user", "content": "Where is order A1001?"}]
for choice in ("required", {"type": "function", "function": {"name": "get_order_status"}}):
    reply = client.chat.completions.create(model="smoke-1", messages=ask, tools=tools, tool_choice=choice, max_tokens=128)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls" and "order_id" in json.loads(call.function.arguments), reply
schema = {"type": "object", "properties": {"intent": {"enum": ["track", "refund"]}, "urgent": {"type": "boolean"}},
          "required": ["intent", "urgent"], "additionalProperties": False}
reply = client.chat.completions.create(model="smoke-1", messages=ask, max_tokens=128, logprobs=True, top_logprobs=2,
    response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}})
assert set(json.loads(reply.choices[0].message.content)) == {"intent", "urgent"}, reply
assert all(len(e.top_logprobs) == 2 for e in reply.choices[0].logprobs.content)
print("tools, JSON schema and logprobs on --engine vllm: ok")
PYEOF
for name in smoke-2 smoke-3 smoke-4; do $PY -m lora_gateway adapters publish "$WORK/run/adapter" --name "$name" --adapters-dir "$WORK/adapters"; done
until curl -sf "http://127.0.0.1:$GATEWAY_PORT/v1/models" | grep -q '"smoke-4"'; do sleep 0.2; done

echo "== load through the gateway"
$PY benchmarks/loadgen.py --base-url "http://127.0.0.1:$GATEWAY_PORT" --models $ADAPTERS \
  --num-prompts "$PROMPTS" --concurrency "$CONCURRENCY" --max-tokens 128 --result-json "$WORK/gateway.json"
kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true; unset GATEWAY_PID

echo "== bare vllm serve with the same adapters"
modules=""; for name in $ADAPTERS; do modules="$modules $name=$WORK/adapters/$name"; done
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve "$MODEL" --port "$VLLM_PORT" --enable-lora --max-lora-rank 16 \
  --max-loras 4 --gpu-memory-utilization 0.5 --lora-modules $modules &
VLLM_PID=$!
wait_ready "http://127.0.0.1:$VLLM_PORT/health"
$PY benchmarks/loadgen.py --base-url "http://127.0.0.1:$VLLM_PORT" --models $ADAPTERS \
  --num-prompts "$PROMPTS" --concurrency "$CONCURRENCY" --max-tokens 128 --result-json "$WORK/vllm.json"

$PY - "$WORK/gateway.json" "$WORK/vllm.json" <<'PYEOF'
import json, sys
from pathlib import Path
gateway, bare = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
ttft = gateway["median_ttft_ms"] / bare["median_ttft_ms"]
throughput = gateway["output_throughput"] / bare["output_throughput"]
result = {"gateway": gateway, "bare_vllm": bare, "ttft_p50_ratio": ttft, "throughput_ratio": throughput,
          "targets_met": {"ttft_p50_within_5pct": ttft <= 1.05, "throughput_at_least_95pct": throughput >= 0.95}}
Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
Path("benchmarks/results/gpu_smoke.json").write_text(json.dumps(result, indent=2))
print(f"TTFT p50 gateway/vLLM: {ttft:.3f}x (target <= 1.05), output throughput: {throughput:.3f}x (target >= 0.95)")
PYEOF
