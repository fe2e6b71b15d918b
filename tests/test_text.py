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


def test_a_hook_that_splits_the_prefix_per_class_changes_no_feature(tiny_backbone):
    """A text hook may give every class its own prefix (ISP's structural modules do); with an
    unchanged prefix the features equal the shared-prefix ones, with and without a per-group shift."""
    torch.manual_seed(0)
    encoder = PromptTextEncoder(tiny_backbone.model)
    learner = PromptLearner(encoder, tiny_backbone.tokenizer, n_ctx=4)
    learner.set_classnames(CLASSES)
    seen = []

    def per_class(layer, prefix, suffix, eot):
        seen.append((layer, tuple(prefix.shape), tuple(suffix.shape), tuple(eot.shape)))
        return prefix.unsqueeze(1).expand(-1, suffix.shape[1], -1, -1) if layer == 0 else prefix

    torch.testing.assert_close(learner(hooks=[per_class]), learner(), rtol=1e-6, atol=1e-6)
    width, n = encoder.width, len(CLASSES)
    assert seen[0][1:] == ((1, 5, width), (1, n, seen[0][2][2], width), (1, n))  # layer 0: shared, then split
    assert seen[1][1] == (n, 5, width) and seen[1][2][:2] == (n, 1)  # from layer 1 on: a group per class
    shift = torch.randn(2, width)
    torch.testing.assert_close(learner(shift, hooks=[per_class]), learner(shift), rtol=1e-6, atol=1e-6)


def test_an_end_anchored_text_group_sits_between_the_context_and_the_class_tokens(tiny_backbone):
    """`at="end"` in the text tower: after [SOS] and the host's context, right before the class
    name (CasPL's [SOS][adapt][boost][class]); a start-anchored group goes right after [SOS]."""
    from specpl.slots import END, START, PromptGroup

    torch.manual_seed(0)
    encoder = PromptTextEncoder(tiny_backbone.model)
    learner = PromptLearner(encoder, tiny_backbone.tokenizer, n_ctx=4)
    learner.set_classnames(CLASSES)
    width = encoder.width
    inputs = {}

    def record(layer, prefix, suffix, eot):
        inputs.setdefault(layer, prefix)
        return prefix

    for at in (END, START):
        inputs.clear()
        tokens = torch.randn(2, width)
        learner(groups=[PromptGroup([tokens], at=at, name="boost")], hooks=[record])
        prefix = inputs[0][0]
        context = learner.ctx + tiny_backbone.model.positional_embedding[1:5]
        placed = slice(5, 7) if at == END else slice(1, 3)
        torch.testing.assert_close(prefix[placed], tokens)  # inserted tokens carry no positional embedding
        torch.testing.assert_close(prefix[1:5] if at == END else prefix[3:7], context)
