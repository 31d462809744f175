"""Validation metric cost: CMMD's CLIP image embedding, the OCR title read-back and the CLIP score,
per image at 1152 x 896, as a fraction of sampling that image.

    python benchmarks/metric_cost.py [--steps 50] [--repeat 2] [--images 6] [--threads N] [--json out.json]
    python benchmarks/metric_cost.py --steps 2 --repeat 1 --images 2   # a quick check of the code path

Measured here, in ``--repeat`` rounds of one of each (so a change in the machine's load hits every
figure alike; warm-up calls first): seconds per image, median over the rounds, as wall time and as
CPU time of this process (all its threads; spinning worker threads count too):

- sampling: cover-hpc's generator (``cover_hpc.model.sampling.load_generator``, as validation loads it) on
  the demo's tiny SDXL-structured model (``common.demo_assets``), ``--steps`` Euler steps (validation's
  default, 50), guidance 5.0, batch 1, 525-token captions;
- CMMD embedding: ``ClipScorer.image_embeddings`` (``cover_hpc.metrics.clip_score``) on ``--images`` covers;
- CLIP score: ``ClipScorer.scores`` on the same covers and long captions (cut at 77 tokens);
- OCR: ``cover_hpc.metrics.ocr.load_ocr("rapidocr").read`` on the same covers, each typeset with
  ``cover_hpc.typeset`` (title and author) over a busy background.

The CLIP model is the spec's default, ``openai/clip-vit-base-patch16``, built from its configuration
(ViT-B/16 image tower, 12 x 512 text tower, 512-d projection) with random weights, since nothing can
be downloaded: the cost does not depend on the values. It is saved and loaded through
``cover_hpc.metrics.clip_score.load_scorer``, the path validation takes. Measured fractions are against the
tiny model, whose sampling is far cheaper than SDXL's.

Counted (FLOPs, 2 per multiply-add; matrix products, convolutions and attention, which is what
``torch.utils.flop_counter.FlopCounterMode`` counts; element-wise work left out on both sides):

- full-size SDXL sampling (``benchmarks/sdxl.py``, on the meta device) at the same size and steps:
  the UNet on a batch of 2 per step (classifier-free guidance), both text encoders over the 7 caption
  chunks once, the VAE decode once; the same for the tiny model (so its GFLOP/s can be read off);
- the CLIP image tower at 224 x 224 (the CMMD embedding) and the text tower over 77 tokens (the CLIP
  score is both);
- OCR: the Conv, ConvTranspose, MatMul and Gemm nodes of rapidocr's three ONNX models (PP-OCRv4
  detection, direction classifier, PP-OCRv4 recognition) run in one read of the first cover: the
  activation shapes from onnxruntime's profile of that read (graph optimisations off, so the nodes
  are the model files'), the weight shapes from the model files.

The counted fraction says what the metric adds on a GPU next to full-size SDXL if both ran at the
same utilisation; a small model at batch 1-16 usually runs at a lower one, so read it as a floor.
OCR runs on the node's CPU cores (onnxruntime, CPU), not on the GPU: its time is the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from math import prod
from pathlib import Path
from typing import Any

from common import demo_assets, header, table, write_json

SIZE = (1152, 896)  # height, width, as the spec gives sizes
PROMPT = ('Book Cover - This book title is "the lighthouse keeper". This book publisher is "harbor lane press". '
          "This book genres are mystery , fiction. A keeper finds a letter that was never sent, and follows it "
          "along the coast through three winters of storms, wrecks and a town that would rather forget. "
          "Illustrated cover: a lighthouse on a black cliff at dusk, a lit window, gulls over a grey sea, "
          "the title in tall serif capitals across the sky, the author's name small at the foot.")  # fmt: skip
COVERS = [("The Lighthouse Keeper", "Ada Marlowe", "mystery"), ("Salt and Iron", "Tomás Reyes", "fantasy"),
          ("A Winter in Kraków", "Elin Dahl", "historical fiction"), ("Signal 451", None, "science fiction"),
          ("The Quiet Harbour", "June Okafor", "literary fiction"),
          ("Night Trains", "Kofi Mensah", "thriller")]  # fmt: skip
BACKGROUNDS = ("noise", "gradient", "shapes", "demo")
#: openai/clip-vit-base-patch16 (validate.clip_model's default), from its config.json
CLIP_VIT_B16: dict[str, Any] = {
    "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                    "num_attention_heads": 8, "max_position_embeddings": 77},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    "projection_dim": 512,
}  # fmt: skip


def timed(call: Callable[[Sequence[Any]], Any], items: Sequence[Any], repeat: int) -> dict[str, list[float]]:
    """Wall and CPU seconds (this process's threads, all cores) per item of ``repeat`` calls of
    ``call(items)``, after a warm-up call on the first item."""
    call(items[:1])
    times: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        call(items)
        times["wall"].append((time.perf_counter() - wall) / len(items))
        times["cpu"].append((time.process_time() - cpu) / len(items))
    return times


def make_covers(count: int, data_dir: Path) -> list[Any]:
    """``count`` covers of 1152 x 896 (height x width): titles typeset over busy backgrounds."""
    from cover_hpc.demo.title_images import background, demo_art
    from cover_hpc.typeset import typeset

    rng = random.Random(0)
    art = demo_art(data_dir)
    covers = []
    for index in range(count):
        title, author, genre = COVERS[index % len(COVERS)]
        base = background(BACKGROUNDS[index % len(BACKGROUNDS)], (SIZE[1], SIZE[0]), rng, art)
        covers.append(typeset(base, title, author=author, genres=[genre]).image)
    return covers


def build_clip(folder: Path) -> Path:
    """A random-weight CLIP ViT-B/16 saved where ``load_scorer("transformers", folder)`` reads it; the
    tokenizer is the tiny model's CLIP BPE (every id it makes is a valid row of the 49408-token table)."""
    import shutil

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from cover_hpc.assets import BOS, EOS, clip_vocab_and_merges
    from cover_hpc.demo.tiny_model import build_tokenizers

    vocab, _ = clip_vocab_and_merges()
    torch.manual_seed(0)
    ids = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    config = CLIPConfig(**{**CLIP_VIT_B16, "text_config": {**CLIP_VIT_B16["text_config"], **ids}})
    CLIPModel(config).save_pretrained(folder)
    tokenizer, _ = build_tokenizers(folder / "_tokenizers")
    # openai's preprocessing: shortest edge to 224 (bicubic), centre crop 224 x 224, CLIP mean/std
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizers")
    return folder


def meta_parts(model: str) -> dict[str, Any]:
    """UNet, VAE and text encoders on the meta device: full-size SDXL for 'sdxl', else from a folder."""
    import torch

    if model == "sdxl":
        import sdxl

        return sdxl.build_parts("meta")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(model)
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
        }


def count_sampling(model: str, size: tuple[int, int], steps: int, chunks: int) -> dict[str, float]:
    """FLOPs of sampling one image: text encoders once, the UNet on a batch of 2 (guidance) per step,
    the VAE decode once (``model``: 'sdxl' for full size, or the tiny model's folder)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cover_hpc.model.encoding import encode_chunks

    parts = meta_parts(model)
    unet, vae = parts["unet"], parts["vae"]
    height, width = size
    flops: dict[str, float] = {}
    with torch.device("meta"), torch.no_grad():
        ids = torch.zeros(1, chunks, 77, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            encode_chunks(parts["text_encoder"], parts["text_encoder_2"], ids, ids)
        flops["text encoders"] = float(counter.get_total_flops())
        latents = torch.zeros(2, unet.config.in_channels, height // 8, width // 8)
        context = torch.zeros(2, chunks * 77, unet.config.cross_attention_dim)
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        conditions = {"text_embeds": torch.zeros(2, pooled), "time_ids": torch.zeros(2, 6)}
        with FlopCounterMode(display=False) as counter:
            unet(latents, torch.zeros(2), context, added_cond_kwargs=conditions)
        flops["UNet, one step (batch 2)"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.zeros(1, vae.config.latent_channels, height // 8, width // 8))
        flops["VAE decode"] = float(counter.get_total_flops())
    flops[f"UNet, {steps} steps"] = steps * flops["UNet, one step (batch 2)"]
    flops["total"] = flops["text encoders"] + flops[f"UNet, {steps} steps"] + flops["VAE decode"]
    return flops


def count_clip() -> dict[str, float]:
    """FLOPs per image of the ViT-B/16 image tower at 224 x 224 and of the text tower over 77 tokens."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**CLIP_VIT_B16)).eval()
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224))
            image = float(counter.get_total_flops())
            with FlopCounterMode(display=False) as counter:  # no padding mask: all 77 positions used
                model.get_text_features(input_ids=torch.zeros(1, 77, dtype=torch.long))
            text = float(counter.get_total_flops())
    return {"image tower": image, "text tower": text}


def _fields(data: bytes) -> Any:
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes otherwise."""
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            length = varint()
            yield number, wire, data[position : position + length]
            position += length
        else:  # fixed 64- or 32-bit
            size = 8 if wire == 1 else 4
            yield number, wire, data[position : position + size]
            position += size


def _packed_varints(data: bytes) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(value)
            value = shift = 0
    return values


def _tensor(data: bytes) -> tuple[str, list[int]]:
    """Name and dims of a TensorProto (dims = 1, name = 8)."""
    dims: list[int] = []
    name = ""
    for number, wire, value in _fields(data):
        if number == 1:
            dims.extend([value] if wire == 0 else _packed_varints(value))
        elif number == 8 and wire == 2:
            name = value.decode()
    return name, dims


def onnx_weight_shapes(path: Path) -> dict[str, list[list[int] | None]]:
    """Per node name, the shape of each input that is a stored weight (None for activations), read
    from the model file with a minimal protobuf reader, since the ``onnx`` package is not a
    dependency and onnxruntime's profile leaves some weights out. Weights are graph initializers or,
    as Paddle2ONNX writes them, Constant nodes. Field numbers (onnx.proto): ModelProto.graph 7;
    GraphProto.node 1, initializer 5; NodeProto.input 1, output 2, name 3, op_type 4, attribute 5;
    AttributeProto.t 5."""
    graph = next(value for number, wire, value in _fields(path.read_bytes()) if number == 7 and wire == 2)
    nodes, weights = [], {}
    for number, wire, value in _fields(graph):
        if number == 1 and wire == 2:
            fields = [(n, v) for n, w, v in _fields(value) if w == 2]
            texts = {n: [v.decode() for m, v in fields if m == n] for n in (1, 2, 3, 4)}
            if texts[4] == ["Constant"]:
                for attribute in (v for n, v in fields if n == 5):
                    for n, w, v in _fields(attribute):
                        if n == 5 and w == 2:
                            weights[texts[2][0]] = _tensor(v)[1]
            else:
                nodes.append(((texts[3] or [""])[0], texts[1]))
        elif number == 5 and wire == 2:
            tensor_name, dims = _tensor(value)
            weights[tensor_name] = dims
    return {name: [weights.get(i) for i in inputs] for name, inputs in nodes}


def node_flops(op: str, inputs: Sequence[list[int] | None], output: list[int]) -> float:
    """FLOPs of one ONNX node: ``inputs`` are its input shapes (activations as profiled, weights as
    stored), ``output`` its first output's shape. Matrix products and convolutions only."""
    if op == "Conv" and inputs[1]:  # output elements x (input channels per group x kernel) multiply-adds
        return 2.0 * prod(output) * prod(inputs[1][1:])
    if op == "ConvTranspose" and inputs[0] and inputs[1]:  # each input element scatters to Cout/g x kernel
        return 2.0 * prod(inputs[0]) * prod(inputs[1][1:])
    if op == "MatMul" and inputs[0]:
        return 2.0 * prod(output) * inputs[0][-1]
    if op == "Gemm" and inputs[0]:  # A is (m, k), or (k, m) when transposed; the output (m, n)
        return 2.0 * prod(output) * (prod(inputs[0]) // output[0])
    if op in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        raise ValueError(f"{op} node without the input shapes its FLOPs need: {inputs}")
    return 0.0


def profile_flops(profile: Path, model: Path) -> float:
    """FLOPs of the nodes run in an onnxruntime profile of ``model`` (graph optimisations off, so
    its node names are the file's)."""
    stored = onnx_weight_shapes(model)
    total = 0.0
    for event in json.loads(profile.read_text()):
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node, args = event["name"].removesuffix("_kernel_time"), event["args"]
        profiled = [next(iter(entry.values())) for entry in args["input_type_shape"]]
        # the profile lists the activations first and only some weights: weights come from the file
        inputs: list[list[int] | None] = [*profiled[:1], *[None] * 2]
        for index, shape in enumerate(stored.get(node, [])[:3]):
            if shape is not None:
                inputs[index] = shape
            elif index < len(profiled):
                inputs[index] = profiled[index]
        total += node_flops(args["op_name"], inputs, next(iter(args["output_type_shape"][0].values())))
    return total


def count_ocr(cover: Any, threads: int) -> dict[str, float]:
    """FLOPs of one rapidocr read of ``cover``, per model, from onnxruntime's profile of that read."""
    import onnxruntime
    from rapidocr_onnxruntime.utils import infer_engine

    from cover_hpc.metrics.ocr import load_ocr

    original = infer_engine.OrtInferSession._init_sess_opts
    with tempfile.TemporaryDirectory() as folder:

        def profiled(config: dict[str, Any]) -> Any:
            options = original(config)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "ort")
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            return options

        infer_engine.OrtInferSession._init_sess_opts = staticmethod(profiled)
        try:
            engine = load_ocr("rapidocr", threads)
        finally:
            infer_engine.OrtInferSession._init_sess_opts = staticmethod(original)
        engine.read(cover)
        # rapidocr-onnxruntime 1.4's sessions, inside the RapidOcr wrapper
        inner = engine._engine  # type: ignore[attr-defined]
        sessions = {"detection": inner.text_det.infer.session, "direction": inner.text_cls.infer.session,
                    "recognition": inner.text_rec.session.session}  # fmt: skip
        flops = {
            name: profile_flops(Path(session.end_profiling()), Path(session._model_path))
            for name, session in sessions.items()
        }
    flops["total"] = sum(flops.values())
    return flops


def main() -> None:
    import torch

    from cover_hpc.metrics.cmmd import cmmd
    from cover_hpc.model.encoding import num_chunks
    from cover_hpc.spec.schema import DataConfig, ModelConfig, ValidateConfig

    defaults = ValidateConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="sampling steps, measured and counted")
    parser.add_argument("--repeat", type=int, default=2, help="rounds: one image sampled, each metric on the covers")
    parser.add_argument("--images", type=int, default=defaults.num_prompts, help="covers per metric call")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and OCR threads")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("validation metric cost: CMMD embedding, OCR read-back, CLIP score against sampling")
    print(f"# load average at start: {os.getloadavg()[0]:.2f} (other work on the machine slows every figure)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cover_hpc.metrics.clip_score import load_scorer
    from cover_hpc.metrics.ocr import load_ocr
    from cover_hpc.model.sampling import load_generator

    tokens = DataConfig().max_caption_tokens
    chunks = num_chunks(tokens)
    measured: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        model, data = demo_assets(root / "assets")
        generator = load_generator(ModelConfig(pretrained=str(model)), None, tokens, "auto")
        torch.set_num_threads(args.threads)
        covers = make_covers(args.images, data)
        started = time.perf_counter()
        scorer = load_scorer("transformers", str(build_clip(root / "clip-vit-b16")), torch.device("cpu"))
        print(f"# CLIP ViT-B/16 (random weights) built and loaded in {time.perf_counter() - started:.1f} s")
        ocr = load_ocr("rapidocr", args.threads)
        print(f"# sampling: tiny model, {SIZE[0]}x{SIZE[1]}, {args.steps} steps, guidance {defaults.guidance}; "
              f"metrics on {len(covers)} covers; {torch.get_num_threads()} threads", flush=True)  # fmt: skip

        def sample(prompts: Sequence[str], steps: int = args.steps) -> Any:
            return generator.generate(prompts, list(range(len(prompts))), steps, defaults.guidance, SIZE)

        calls: dict[str, tuple[Callable[[Sequence[Any]], Any], Sequence[Any]]] = {
            "sampling (tiny model)": (sample, [PROMPT]),
            "CMMD embedding": (scorer.image_embeddings, covers),
            "CLIP score": (lambda some: scorer.scores(some, [PROMPT] * len(some)), covers),
            "OCR read-back": (lambda some: [ocr.read(cover) for cover in some], covers),
        }
        sample([PROMPT], steps=1)  # warm-ups: first-call allocations, caches
        for name, (call, items) in calls.items():
            if name != "sampling (tiny model)":
                call(items[:1])
        # rounds of one of each, so a change in the machine's load hits every figure alike
        measured = {name: {"wall": [], "cpu": []} for name in calls}
        for round_ in range(args.repeat):
            for name, (call, items) in calls.items():
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                call(items)
                measured[name]["wall"].append((time.perf_counter() - wall_start) / len(items))
                measured[name]["cpu"].append((time.process_time() - cpu_start) / len(items))
            print(f"# round {round_ + 1}: wall s per image " + ", ".join(
                f"{name} {times['wall'][-1]:.3f}" for name, times in measured.items()), flush=True)  # fmt: skip
        a, b = scorer.image_embeddings(covers), scorer.image_embeddings(covers[::-1])
        distance = statistics.median(timed(lambda _: cmmd(a, b), [None], 20)["wall"])
        print(f"# OCR read of cover 0: {ocr.read(covers[0])!r}", flush=True)
        ocr_flops: dict[str, float] | None
        try:
            ocr_flops = count_ocr(covers[0], args.threads)
        except Exception as error:  # rapidocr internals moved: reported, the measured figure stays
            ocr_flops = None
            print(f"# OCR FLOPs not counted: {error!r}")
        tiny_flops = count_sampling(str(model), SIZE, args.steps, chunks)
    sdxl_flops = count_sampling("sdxl", SIZE, args.steps, chunks)
    clip_flops = count_clip()
    metric_flops = {"CMMD embedding": clip_flops["image tower"],
                    "CLIP score": clip_flops["image tower"] + clip_flops["text tower"],
                    "OCR read-back": ocr_flops["total"] if ocr_flops else None}  # fmt: skip
    wall = {name: statistics.median(times["wall"]) for name, times in measured.items()}
    cpu = {name: statistics.median(times["cpu"]) for name, times in measured.items()}
    tiny = "sampling (tiny model)"
    rows: list[dict[str, Any]] = [
        {"per image": "sampling, tiny model (measured)", "wall s": wall[tiny], "x tiny (wall)": 1.0,
         "CPU s": cpu[tiny], "x tiny (CPU)": 1.0, "GFLOP": tiny_flops["total"] / 1e9},
        {"per image": f"sampling, full SDXL (counted: {args.steps} steps, guidance)",
         "GFLOP": sdxl_flops["total"] / 1e9, "x SDXL (FLOPs)": 1.0},
    ]  # fmt: skip
    for name in ("CMMD embedding", "OCR read-back", "CLIP score"):
        flops = metric_flops[name]
        rows.append({"per image": name, "wall s": wall[name], "x tiny (wall)": wall[name] / wall[tiny],
                     "CPU s": cpu[name], "x tiny (CPU)": cpu[name] / cpu[tiny],
                     "GFLOP": flops / 1e9 if flops else "not counted",
                     "x SDXL (FLOPs)": flops / sdxl_flops["total"] if flops else ""})  # fmt: skip
    print(f"\n{SIZE[0]}x{SIZE[1]}, {args.images} covers per metric call, {torch.get_num_threads()} threads; "
          f"CLIP ViT-B/16 with random weights (openai/clip-vit-base-patch16's config; nothing downloaded)")  # fmt: skip
    print(table(rows, ["per image", "wall s", "x tiny (wall)", "CPU s", "x tiny (CPU)", "GFLOP", "x SDXL (FLOPs)"]))
    print(f"\nCMMD distance itself ({len(a)} against {len(b)} embeddings): {1e3 * distance:.3f} ms")
    print("full SDXL sampling, GFLOP: " + ", ".join(f"{k} {v / 1e9:,.0f}" for k, v in sdxl_flops.items()))
    print("tiny model sampling, GFLOP: " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in tiny_flops.items()))
    print("CLIP ViT-B/16, GFLOP per image: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in clip_flops.items()))
    if ocr_flops:
        print("OCR (rapidocr, one read), GFLOP: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in ocr_flops.items()))
    for name, times in measured.items():
        print(f"# {name}: seconds per image, wall {[round(t, 4) for t in times['wall']]}, "
              f"CPU {[round(t, 4) for t in times['cpu']]}")  # fmt: skip
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    write_json(args.json, {**info, "size": list(SIZE), "steps": args.steps, "images": args.images,
                           "threads": torch.get_num_threads(), "measured_s": measured, "cmmd_distance_s": distance,
                           "sdxl_flops": sdxl_flops, "tiny_flops": tiny_flops, "clip_flops": clip_flops,
                           "ocr_flops": ocr_flops, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
