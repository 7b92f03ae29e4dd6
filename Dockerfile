# lora-gateway on vLLM: one GPU container serving a base model and hot-swappable LoRA adapters.
#   docker build -t lora-gateway .
#   docker run --gpus all -p 8000:8000 -e LORA_GATEWAY_MODEL=Qwen/Qwen2.5-7B-Instruct \
#     -v adapters:/adapters -v hf-cache:/home/gateway/.cache/huggingface lora-gateway
# Built on the official vLLM image at the version lora-gateway pins; vLLM's torch, transformers and
# fastapi are kept exactly as that image ships them (installed versions are frozen as constraints).
ARG VLLM_VERSION=v0.33.0
FROM vllm/vllm-openai:${VLLM_VERSION}

WORKDIR /opt/lora-gateway
COPY pyproject.toml setup.py README.md ./
COPY server ./server
COPY examples ./examples

# hadolint ignore=DL3013
RUN python3 -m pip freeze > /tmp/vllm-image-constraints.txt \
 && python3 -m pip install --no-cache-dir --constraint /tmp/vllm-image-constraints.txt ".[sources]" \
 && python3 -c "import lora_gateway, vllm, peft; print('lora-gateway on vLLM', vllm.__version__)" \
 && rm /tmp/vllm-image-constraints.txt

RUN useradd --create-home --uid 10001 gateway \
 && mkdir -p /adapters /home/gateway/.cache/huggingface \
 && chown -R gateway:gateway /adapters /home/gateway/.cache
USER 10001:10001

# Model, keys and limits come from the environment (LORA_GATEWAY_*; see README's settings table).
ENV LORA_GATEWAY_HOST=0.0.0.0 \
    LORA_GATEWAY_PORT=8000 \
    LORA_GATEWAY_ADAPTERS_DIR=/adapters \
    HF_HOME=/home/gateway/.cache/huggingface \
    PYTHONUNBUFFERED=1
VOLUME ["/adapters"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["lora-gateway", "serve", "--engine", "vllm"]
