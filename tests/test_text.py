"""The two text-encoder shortcuts are exact: truncation and the shared prefix."""
import torch

from specpl.methods.prompt import PromptLearner
from specpl.text import PromptTextEncoder

CLASSES = ["cat", "golden retriever", "fire truck with a very long ladder"]


def test_truncated_text_matches_77_tokens(tiny_backbone):
    encoder = PromptTextEncoder(tiny_backbone.model)
    tokens = tiny_backbone.tokenizer([f"a photo of a {c}." for c in CLASSES])
    full = tiny_backbone.model.encode_text(tokens)
    length = int(tokens.argmax(-1).max()) + 1
    assert length < 77
    truncated = encoder(encoder.embed_tokens(tokens[:, :length]), tokens.argmax(-1))
    torch.testing.assert_close(truncated, full, rtol=0, atol=1e-5)


def test_shared_prefix_matches_full_prompts(tiny_backbone):
    torch.manual_seed(0)
    encoder = PromptTextEncoder(tiny_backbone.model)
    shared = PromptLearner(encoder, tiny_backbone.tokenizer, n_ctx=4, shared_prefix=True)
    full = PromptLearner(encoder, tiny_backbone.tokenizer, n_ctx=4, shared_prefix=False)
    full.ctx.data.copy_(shared.ctx.data)
    for learner in (shared, full):
        learner.set_classnames(CLASSES)
    torch.testing.assert_close(shared(), full(), rtol=0, atol=1e-5)
    # and with a per-group context shift (CoCoOp's image-conditioned case)
    shift = torch.randn(2, encoder.width)
    torch.testing.assert_close(shared(shift), full(shift), rtol=0, atol=1e-5)


def test_prompt_gradients_agree(tiny_backbone):
    torch.manual_seed(0)
    encoder = PromptTextEncoder(tiny_backbone.model)
    learners = [PromptLearner(encoder, tiny_backbone.tokenizer, n_ctx=4, shared_prefix=flag) for flag in (True, False)]
    learners[1].ctx.data.copy_(learners[0].ctx.data)
    grads = []
    for learner in learners:
        learner.set_classnames(CLASSES)
        learner().pow(2).sum().backward()
        grads.append(learner.ctx.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_ctx_init_uses_phrase_embeddings(tiny_backbone):
    encoder = PromptTextEncoder(tiny_backbone.model)
    learner = PromptLearner(encoder, tiny_backbone.tokenizer, n_ctx=16, ctx_init="a photo of a")
    assert learner.n_ctx == 4
    tokens = tiny_backbone.tokenizer(["a photo of a"])[0]
    torch.testing.assert_close(learner.ctx.data, encoder.embed_tokens(tokens[1:5]))
    learner.set_classnames(["dog"])
    # with the phrase as context, the prompt equals CLIP's own "a photo of a dog."
    expected = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(["a photo of a dog."]))
    torch.testing.assert_close(learner(), expected, rtol=0, atol=1e-5)
