"""The text path (Ref-AVS): the frozen encoder of referring expressions (`encoder`)."""

from auralsam2.text.encoder import (
    DEFAULT_TEXT_MODEL,
    MAX_LENGTH,
    TOKENIZER_SETTINGS,
    TextEmbeddings,
    TextEncoder,
    locate_text_encoder,
    text_encoder_identity,
    tiny_text_encoder,
)

__all__ = ["DEFAULT_TEXT_MODEL", "MAX_LENGTH", "TOKENIZER_SETTINGS", "TextEmbeddings", "TextEncoder",
           "locate_text_encoder", "text_encoder_identity", "tiny_text_encoder"]
