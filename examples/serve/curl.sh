#!/usr/bin/env bash
# One question with an image, through curl. Start a server first: diffusionvl serve &
# usage: bash examples/serve/curl.sh [IMAGE.png] [URL]
set -euo pipefail
url=${2:-http://127.0.0.1:8000}
if [ $# -ge 1 ]; then
    image=$1
else  # a MiniVL drawing of a few shapes
    image=$(mktemp --suffix .png)
    python3 -c "from diffusionvl.minivl.generator import generate; generate('count', 'test', 0, 1, 112)[0].image.save('$image')"
fi
cat > /tmp/diffusionvl-request.json <<JSON
{"model": "minivl-dvlm", "max_tokens": 16,
 "messages": [{"role": "user", "content": [
   {"type": "image_url", "image_url": {"url": "data:image/png;base64,$(base64 -w0 "$image")"}},
   {"type": "text", "text": "How many purple shapes are there?"}]}]}
JSON
curl -s "$url/v1/chat/completions" -H "Content-Type: application/json" -d @/tmp/diffusionvl-request.json
echo
