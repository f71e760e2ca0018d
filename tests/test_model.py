import pytest
import torch

from s3prl_distill.model import StudentConfig, StudentModel, distilhubert_config

from helpers import random_waves


def tiny_config(**overrides) -> StudentConfig:
    data = {
        "feature_extractor": {"conv_layers": "[(16,10,5)] + [(16,3,2)]*4 + [(16,2,2)]*2"},
        "encoder": {"num_layers": 2, "embed_dim": 32, "ffn_dim": 64, "num_heads": 4,
                    "pos_conv_kernel": 8, "pos_conv_groups": 4},
        "prediction_head": {"target_layers": [1, 2], "out_dim": 24},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return StudentConfig.from_dict(data)


def test_distilhubert_sizes_match_the_paper():
    model = StudentModel(distilhubert_config())
    assert model.num_parameters() == 23_491_200  # the paper's 23.49 M, heads excluded
    assert model.num_parameters(include_heads=True) == 27_034_752
    assert model.downsample_rate == 320 and model.receptive_field == 400


def test_shapes_and_frame_lengths():
    torch.manual_seed(0)
    model = StudentModel(tiny_config()).eval()
    lengths = torch.tensor([16000, 12345, 400])
    waves = torch.nn.utils.rnn.pad_sequence(random_waves(lengths.tolist()), batch_first=True)
    out = model(waves, lengths)
    assert out.features.shape == (3, 49, 32)
    assert [t.shape for t in out.layer_outputs] == [(3, 49, 32)] * 2
    assert out.predictions.shape == (3, 2, 49, 24)
    assert out.lengths.tolist() == [49, 38, 1]
    # The frame count formula equals what the CNN produces for each length on its own.
    for length, frames in zip(lengths.tolist(), out.lengths.tolist()):
        assert model(waves[:1, :length]).features.shape[1] == frames
    assert out.padding_mask[1, 38:].all() and not out.padding_mask[1, :38].any()


@pytest.mark.parametrize("norm", ["group_norm", "layer_norm"])
@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_features_do_not_depend_on_the_rest_of_the_batch(norm, layer_norm_first):
    torch.manual_seed(0)
    model = StudentModel(tiny_config(feature_extractor__norm=norm, encoder__layer_norm_first=layer_norm_first))
    model.eval()
    waves = random_waves([16000, 7000, 11111], seed=3)
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    batch = model(padded, torch.tensor([w.numel() for w in waves]))
    for index, wave in enumerate(waves):
        alone = model(wave[None])
        frames = alone.features.shape[1]
        pairs = [(batch.features, alone.features), (batch.last_hidden, alone.last_hidden),
                 *zip(batch.layer_outputs, alone.layer_outputs)]
        for in_batch, single in pairs:
            assert (in_batch[index, :frames] - single[0]).abs().max() <= 1e-4
        assert (batch.predictions[index, :, :frames] - alone.predictions[0]).abs().max() <= 1e-4


def test_masked_group_norm_statistics_stay_fp32_under_autocast():
    """Under autocast (bf16 here; fp16 on CUDA, where a reduced-precision sum over ~50k frames overflows) the masked
    statistics are still fp32: the same input gives what the fp32 computation gives, to fp32 rounding."""
    from s3prl_distill.model.feature_extractor import _masked_instance_norm

    torch.manual_seed(0)
    x = 30.0 + 5.0 * torch.randn(2, 8, 4000)  # a large mean: reduced-precision sums lose the centred variance
    lengths = torch.tensor([4000, 2500])
    weight, bias = torch.rand(8) + 0.5, torch.randn(8)
    reference = _masked_instance_norm(x, lengths, weight, bias, 1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = _masked_instance_norm(x, lengths, weight, bias, 1e-5)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=0, atol=1e-5)


def test_cnn_gradient_is_scaled_by_grad_mult():
    waves = torch.stack(random_waves([4000, 4000]))

    def cnn_grad(grad_mult):
        torch.manual_seed(0)
        model = StudentModel(tiny_config(feature_extractor__grad_mult=grad_mult)).eval()
        model(waves).last_hidden.pow(2).sum().backward()
        return model.feature_extractor.conv_layers[0].conv.weight.grad, model.encoder.layers[0].feed_forward.fc1.weight.grad

    full_cnn, full_ffn = cnn_grad(1.0)
    scaled_cnn, scaled_ffn = cnn_grad(0.1)
    frozen_cnn, frozen_ffn = cnn_grad(0.0)
    torch.testing.assert_close(scaled_cnn, 0.1 * full_cnn)
    torch.testing.assert_close(scaled_ffn, full_ffn)
    assert frozen_cnn is None  # no graph built through a frozen CNN
    torch.testing.assert_close(frozen_ffn, full_ffn)


def test_per_layer_widths_build_pruned_shapes():
    config = tiny_config(encoder={"num_layers": 2, "embed_dim": 32, "ffn_dim": [40, 8], "num_heads": [3, 1],
                                  "head_dim": 8, "pos_conv_kernel": 8, "pos_conv_groups": 4})
    model = StudentModel(config)
    first, second = model.encoder.layers
    assert first.attention.q_proj.weight.shape == (24, 32) and second.attention.out_proj.weight.shape == (32, 8)
    assert first.feed_forward.fc1.weight.shape == (40, 32) and second.feed_forward.fc2.weight.shape == (32, 8)
    out = model(torch.stack(random_waves([3200, 3200])))
    assert out.last_hidden.shape == (2, 9, 32)
