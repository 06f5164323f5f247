"""Tiny, randomly initialised Hugging Face models built offline, for tests and benchmarks.

Real models of real architectures (saved with ``save_pretrained``, loaded by the real
``transformers`` / ``sentence-transformers`` code paths) that take a few MB and load in about a
second: a BERT text classifier, a BERT cross-encoder, a BERT sentence embedder, a ViT image
classifier and a CLIP model with its processor. Their outputs are deterministic for a seed
and meaningless otherwise: compare them with the same model run directly, not with expected
labels. Imports torch and transformers (test side only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "WORDS",
    "tiny_bert_classifier",
    "tiny_clip",
    "tiny_cross_encoder",
    "tiny_sentence_bert",
    "tiny_vit_classifier",
]

#: The tiny vocabulary: anything else is ``[UNK]``.
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "rug",
    "stock",
    "prices",
    "fell",
    "rose",
    "market",
    "bank",
    "river",
    "money",
    "paris",
    "france",
    "capital",
    "city",
    "is",
    "of",
    "what",
    "where",
    "who",
    "photo",
    "picture",
    "red",
    "blue",
    "green",
    "image",
    "text",
    "hello",
    "world",
]

_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    # ten times BERT's 0.02: random weights then give scores that differ from text to text
    "initializer_range": 0.2,
}


def _transformers() -> Any:
    """The transformers module, untyped: its classes are typed per model, these are data."""
    import transformers

    return transformers


def _bert_tokenizer(folder: Path) -> Any:
    tf = _transformers()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return tf.BertTokenizerFast(str(vocab))  # positional: transformers 4 and 5 name it apart


def _bert_for_classification(folder: Path, labels: list[str], seed: int) -> Path:
    import torch

    tf = _transformers()
    tokenizer = _bert_tokenizer(folder)
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **_BERT,
    )
    tf.BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_bert_classifier(folder: str | Path, seed: int = 0) -> Path:
    """A two-label (``negative``, ``positive``) BERT text classifier in ``folder``."""
    return _bert_for_classification(Path(folder), ["negative", "positive"], seed)


def tiny_cross_encoder(folder: str | Path, seed: int = 1) -> Path:
    """A one-logit BERT sequence classifier: what ``sentence_transformers.CrossEncoder`` loads."""
    return _bert_for_classification(Path(folder), ["relevance"], seed)


def tiny_sentence_bert(folder: str | Path, seed: int = 4) -> Path:
    """A sentence-transformers text embedder: a BERT, mean pooling, L2 normalisation."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved its modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models  # type: ignore[no-redef,attr-defined]

    tf = _transformers()
    folder = Path(folder)
    bert = folder / "bert"
    tokenizer = _bert_tokenizer(bert)
    torch.manual_seed(seed)
    tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, **_BERT)).eval().save_pretrained(
        bert
    )
    tokenizer.save_pretrained(bert)
    first = models.Transformer(str(bert))
    dimension = (
        getattr(first, "get_embedding_dimension", None) or first.get_word_embedding_dimension
    )
    pooling = models.Pooling(dimension(), "mean")
    SentenceTransformer(modules=[first, pooling, models.Normalize()]).save(str(folder))
    return folder


def tiny_clip(folder: str | Path, seed: int = 2) -> Path:
    """A CLIP model (text and vision towers, 16-dim projections) with its tokenizer and processor.

    sentence-transformers loads the folder as a multimodal embedding model (texts and images).
    """
    import torch
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tf = _transformers()
    # without torchvision, transformers 5 wants the PIL processor named; older ones have one
    image_processor = getattr(tf, "CLIPImageProcessorPil", None) or tf.CLIPImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE with no merges: every byte is a token, so any text tokenizes.
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = tf.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config = tf.CLIPConfig(
        text_config={**tower, "num_attention_heads": 2, "vocab_size": len(tokens),
                     "max_position_embeddings": 64, "bos_token_id": len(tokens) - 2,
                     "eos_token_id": len(tokens) - 1, "pad_token_id": len(tokens) - 1},
        vision_config={**tower, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    tf.CLIPModel(config).eval().save_pretrained(folder)
    images = image_processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tf.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_vit_classifier(folder: str | Path, seed: int = 3) -> Path:
    """A three-label (``cat``, ``dog``, ``bird``) ViT image classifier on 32×32 images."""
    import torch

    tf = _transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = ["cat", "dog", "bird"]
    config = tf.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)},
        **_BERT,
    )  # fmt: skip
    torch.manual_seed(seed)
    tf.ViTForImageClassification(config).eval().save_pretrained(folder)
    image_processor = getattr(tf, "ViTImageProcessorPil", None) or tf.ViTImageProcessor
    image_processor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
