"""Ask a running `diffusionvl serve` about an image through the official openai client, streaming the answer.

    diffusionvl serve &                      # minivl-dvlm on http://127.0.0.1:8000
    python examples/serve/client.py [--url http://127.0.0.1:8000/v1] [--image PATH] [--question TEXT]

Without --image it draws a MiniVL image (a few shapes) and asks how many there are.
"""

import argparse
import base64
import io

from openai import OpenAI
from PIL import Image


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--image", help="an image file (default: a MiniVL drawing)")
    parser.add_argument("--question", help="default: the MiniVL drawing's question")
    args = parser.parse_args()
    if args.image:
        image, question = Image.open(args.image), args.question or "Describe the image."
    else:
        from diffusionvl.minivl.generator import generate

        sample = generate("caption", "test", 0, 1, 112)[0]
        image, question = sample.image, args.question or sample.question
    client = OpenAI(base_url=args.url, api_key="none")  # the server checks no key
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                               {"type": "text", "text": question}]}],
        extra_body={"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9},
    )
    print(f"Q: {question}\nA: ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="|", flush=True)  # "|" marks a block boundary
        if chunk.usage:
            extra = chunk.usage.model_extra
            print(f"\n{chunk.usage.completion_tokens} tokens, NFE {extra['nfe']}, "
                  f"{extra['tokens_per_forward']:.2f} tokens/forward")


if __name__ == "__main__":
    main()
