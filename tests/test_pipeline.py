"""TuneMV3DPipeline with tiny random components in pixel space (IF-like) and latent space (SD-like)."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_mv3d import Cameras, TuneMV3DPipeline, default_cameras
from diffusers_mv3d.pipelines import CUSTOM_PIPELINE
from dummies import randomize_branch, tiny_pipeline

STEPS = 2


def run(pipe, **kwargs):
    kwargs.setdefault("num_views", 4)
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    if "generator" not in kwargs:  # (setdefault would reseed the global generator a caller passed)
        kwargs["generator"] = torch.Generator().manual_seed(0)
    return pipe(kwargs.pop("prompt", "a red chair with armrests"), **kwargs)


@pytest.fixture(scope="module", params=["pixel", "latent"])
def pipe(request):
    pipe = tiny_pipeline(latent=request.param == "latent")
    randomize_branch(pipe)
    return pipe


def test_output_types_and_shapes(pipe):
    out = run(pipe)
    assert isinstance(out.images, np.ndarray) and out.images.shape == (4, 16, 16, 3)
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert isinstance(out.cameras, Cameras) and len(out.cameras) == 4 and out.cameras.height == 16
    assert out.mesh is None
    pil = run(pipe, output_type="pil").images
    assert len(pil) == 4 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    pt = run(pipe, output_type="pt").images
    assert pt.shape == (4, 3, 16, 16)
    latent = run(pipe, output_type="latent").images
    assert latent.shape == (4, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    two = run(pipe, prompt=["a blue mug", "a red chair"], num_images_per_prompt=2)
    assert two.images.shape == (16, 16, 16, 3)


def test_same_seed_same_images(pipe):
    first = run(pipe, output_type="latent").images
    assert torch.equal(first, run(pipe, output_type="latent").images)
    assert not torch.allclose(first, run(pipe, output_type="latent", generator=torch.Generator().manual_seed(1)).images)


def test_reference_view_is_bit_identical(pipe):
    reference = PIL.Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    with torch.no_grad():
        clean = pipe.encode_views(pipe.preprocess_image(reference, "image")[None])  # [1, C, h, w]
        expected = pipe._views_in_unit_range(clean[:, None])[0].permute(1, 2, 0).numpy()
    latents = run(pipe, image=reference, output_type="latent").images
    assert torch.equal(latents[0], clean[0])  # the clamped view is the reference, bit for bit
    # pixel space: the image itself is bit-identical; latent space: up to the VAE decoding a batch
    same = np.array_equal if pipe.vae is None else (lambda a, b: np.allclose(a, b, atol=1e-5))
    out = run(pipe, image=reference)
    assert same(out.images[0], expected)
    out = run(pipe, reference_images={2: reference}, prompt=None)
    assert same(out.images[2], expected)
    assert not np.allclose(out.images[0], expected, atol=1e-2)
    stochastic = run(pipe, image=reference, output_type="latent", eta=1.0).images  # fresh noise every step
    assert torch.equal(stochastic[0], clean[0]) and not torch.allclose(stochastic[1:], latents[1:])


def test_consistency_ratio_zero_is_plain_and_positive_changes(pipe):
    plain = run(pipe, consistency_ratio=0.0).images
    default_scheduler_ratio = pipe.scheduler.config.consistency_ratio
    assert default_scheduler_ratio == 0.0
    assert np.array_equal(run(pipe).images, plain)
    guided = run(pipe, consistency_ratio=1.0, consistency_scale=7.5).images
    assert not np.allclose(guided, plain)


def test_guidance_scale_defaults_to_the_folders_and_a_round_trip_keeps_it(tmp_path):
    pipe = tiny_pipeline()
    randomize_branch(pipe)
    assert pipe.scheduler.config.guidance_scale == 3.0
    with_three = run(pipe).images
    assert np.array_equal(with_three, run(pipe, guidance_scale=3.0).images)
    pipe.scheduler.register_to_config(guidance_scale=1.0)  # as assemble_pipeline.py --guidance-scale 1 saves it
    without = run(pipe).images
    assert np.array_equal(without, run(pipe, guidance_scale=1.0).images) and not np.allclose(without, with_three)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = TuneMV3DPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.guidance_scale == 1.0 and np.array_equal(run(loaded).images, without)


@pytest.mark.parametrize("latent,eta", [(False, 0.0), (True, 0.0), (False, 1.0)])
def test_fresh_branch_equals_the_frozen_unet_alone(latent, eta):
    pipe = tiny_pipeline(latent=latent)
    generator = torch.Generator().manual_seed(0)
    out = run(pipe, output_type="latent", guidance_scale=3.0, eta=eta, generator=generator)
    # the frozen UNet sampling each view independently from the same noise, written out by hand
    scheduler = pipe.scheduler.inner
    scheduler.set_timesteps(STEPS)
    shape = (1, 4, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).flatten(0, 1)
    with torch.no_grad():
        text = torch.cat(pipe.encode_prompt("a red chair with armrests", "cpu")[::-1])
        text = text.repeat_interleave(4, 0)
        for t in scheduler.timesteps:
            noise = pipe.unet(torch.cat([x, x]), t, text).sample
            uncond, cond = noise.chunk(2)
            x = scheduler.step(uncond + 3.0 * (cond - uncond), t, x, eta=eta, generator=generator).prev_sample
    assert torch.allclose(out.images, x, atol=1e-5)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = TuneMV3DPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded).images, run(pipe).images)
    generic = DiffusionPipeline.from_pretrained(tmp_path / "pipe", custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)
    assert type(generic).__name__ == "TuneMV3DPipeline"
    generic.set_progress_bar_config(disable=True)
    assert np.array_equal(run(generic).images, run(pipe).images)
    assert not list((tmp_path / "pipe").rglob("*.bin"))


def test_callback_on_step_end_sees_every_step(pipe):
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append(step)
        return {"latents": kwargs["latents"]}

    run(pipe, callback_on_step_end=callback)
    assert seen == list(range(STEPS))


def test_prompt_embeds_from_encode_prompt_give_the_prompts_images_without_a_text_encoder(pipe):
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt("a red chair with armrests", "cpu", num_images_per_prompt=2)
    assert prompt_embeds.shape[0] == negative_prompt_embeds.shape[0] == 2 and prompt_embeds.dim() == 3
    assert pipe.encode_prompt("a mug", "cpu", do_classifier_free_guidance=False)[1] is None
    # a pipeline built without text encoder and tokenizer (diffusers builds such pipelines in its own tests)
    parts = {**pipe.components, "text_encoder": None, "tokenizer": None}
    without_text = TuneMV3DPipeline(**parts)
    without_text.set_progress_bar_config(disable=True)
    expected = run(pipe, num_images_per_prompt=2).images
    got = run(without_text, prompt=None, prompt_embeds=prompt_embeds[:1], negative_prompt_embeds=negative_prompt_embeds[:1],
              num_images_per_prompt=2).images
    assert np.array_equal(got, expected)
    with pytest.raises(ValueError, match="prompt_embeds"):  # it cannot encode text itself
        run(without_text)
    with pytest.raises(ValueError, match="not both"):
        run(pipe, prompt_embeds=prompt_embeds)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        run(pipe, prompt=None, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds[:1])


def test_a_pipeline_with_no_scheduler_or_branch_can_still_encode_prompts(pipe):
    text_only = TuneMV3DPipeline(**{name: (c if name in ("text_encoder", "tokenizer") else None)
                                    for name, c in pipe.components.items()})
    embeds, _ = text_only.encode_prompt("a blue mug")
    assert torch.equal(embeds, pipe.encode_prompt("a blue mug", "cpu")[0])


def test_a_step_end_callback_reads_num_timesteps_and_changes_guidance(pipe):
    seen = []

    def raise_guidance(p, step, timestep, kwargs):
        seen.append((p.num_timesteps, p.do_classifier_free_guidance))
        p._guidance_scale += 1.0
        return kwargs

    changed = run(pipe, guidance_scale=2.0, callback_on_step_end=raise_guidance).images
    assert pipe.guidance_scale == 2.0 + STEPS and seen == [(STEPS, True)] * STEPS
    # the second step used guidance 3.0: the same images as a run whose callback sets 3.0 after step 0
    def set_three(p, step, timestep, kwargs):
        p._guidance_scale = 3.0
        return kwargs

    assert np.array_equal(changed, run(pipe, guidance_scale=2.0, callback_on_step_end=set_three).images)
    assert not np.array_equal(changed, run(pipe, guidance_scale=2.0).images)


def test_cross_attention_kwargs_reach_the_branch_and_the_unet(pipe):
    from diffusers.models.attention_processor import AttnProcessor

    class RecordingProcessor(AttnProcessor):
        def __init__(self, log, name):
            super().__init__()
            self.log, self.name = log, name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, marker=None):
            self.log.append((self.name, marker))
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    log = []
    unet_processors, branch_processors = pipe.unet.attn_processors, pipe.controlnet.encoder.attn_processors
    try:
        pipe.unet.set_attn_processor(RecordingProcessor(log, "unet"))
        pipe.controlnet.encoder.set_attn_processor(RecordingProcessor(log, "branch"))
        run(pipe, num_views=2, cross_attention_kwargs={"marker": 7})
    finally:
        pipe.unet.set_attn_processor(unet_processors)
        pipe.controlnet.encoder.set_attn_processor(branch_processors)
    assert {name for name, _ in log} == {"unet", "branch"} and {marker for _, marker in log} == {7}


def test_neus_in_train_mode_jitters_from_the_generator_not_the_global_rng(pipe):
    pipe.neus.train()
    try:
        torch.manual_seed(123)
        first = run(pipe, output_type="latent").images
        torch.manual_seed(999)
        assert torch.equal(first, run(pipe, output_type="latent").images)
    finally:
        pipe.neus.eval()
    assert not torch.equal(first, run(pipe, output_type="latent").images)  # the jitter did change the render


@pytest.mark.parametrize("latent", [False, True])
def test_to_bfloat16_runs_every_component_in_that_dtype(latent):
    pipe = tiny_pipeline(latent=latent)
    randomize_branch(pipe)
    pipe.to(torch.bfloat16)
    assert pipe.unet.dtype == pipe.controlnet.dtype == pipe.neus.dtype == torch.bfloat16
    images = run(pipe, num_views=2, output_type="pt").images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_custom_cameras_are_used(pipe):
    cameras = Cameras.orbit(30.0, [0, 90, 180, 270], height=64)
    out = run(pipe, cameras=cameras)
    assert out.cameras.height == 16
    assert torch.allclose(out.cameras.world_to_camera, cameras.world_to_camera)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_views=0), "num_views"),
        (dict(num_views=2.5), "num_views"),
        (dict(image=PIL.Image.new("RGB", (20, 20))), "resize"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(reference_images={7: PIL.Image.new("RGB", (16, 16))}), "reference_images"),
        (dict(cameras=Cameras.orbit(20.0, [0.0, 90.0], height=16)), "cameras"),
        (dict(prompt=3), "prompt"),
        (dict(consistency_ratio=2.0), "consistency_ratio"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=-3), "num_inference_steps"),
        (dict(neus_interval=0), "neus_interval"),
        (dict(neus_interval=1.5), "neus_interval"),
        (dict(shared_noise_tiles=3), "shared_noise_tiles"),
        (dict(shared_noise_tiles=0), "shared_noise_tiles"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(image=np.full((16, 16, 3), np.nan, dtype=np.float32)), "NaN"),
        (dict(image=np.full((16, 16, 3), 2.0, dtype=np.float32)), r"\[0, 1\]"),
        (dict(image=np.zeros((16, 16, 3), dtype=np.int64)), "uint8"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)


def test_reference_images_of_every_common_type_mean_the_same_picture(pipe):
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    expected = pipe.preprocess_image(PIL.Image.fromarray(rgb), "image")
    torch.testing.assert_close(pipe.preprocess_image(rgb, "image"), expected)  # uint8 array: 0..255
    torch.testing.assert_close(pipe.preprocess_image(rgb.astype(np.float32) / 255, "image"), expected)
    torch.testing.assert_close(pipe.preprocess_image(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, "image"), expected)
    torch.testing.assert_close(pipe.preprocess_image(rgb.astype(np.uint16) * 257, "image"), expected)
    # a 16-bit greyscale PNG (mode I;16 or I): scaled from 0..65535, not clipped to white
    grey = np.random.default_rng(1).integers(0, 65536, (16, 16)).astype(np.uint16)
    got = pipe.preprocess_image(PIL.Image.fromarray(grey), "image")
    torch.testing.assert_close(got[0], torch.from_numpy(grey / 65535.0 * 2 - 1).float(), atol=1e-5, rtol=0)
    assert got.min() < 0  # not white
    # RGBA: transparent pixels become white
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    assert torch.all(pipe.preprocess_image(PIL.Image.fromarray(rgba), "image") == 1.0)


def test_seeded_fuzz_of_call_arguments_gives_images_or_a_clear_value_error(pipe):
    """Random mixtures of good and bad arguments: each call returns finite images of the asked shape or
    raises ValueError whose message names an argument; never another exception."""
    rng = np.random.default_rng(0)
    choices = {
        "num_views": [1, 2, 0, -1, 2.5, "2", True],
        "num_inference_steps": [1, 2, 0, -3, 1.5],
        "guidance_scale": [1.0, 3.0, float("inf"), "3"],
        "consistency_ratio": [None, 0.0, 1.0, 1.5, -0.1],
        "output_type": ["np", "pt", "pil", "jpeg"],
        "prompt": ["a red chair", "", None, 3, ["a", "b"]],
        "eta": [None, 0.0, 1.0],
    }
    names = ("num_views", "num_inference_steps", "guidance_scale", "consistency_ratio", "output_type", "prompt")
    for _ in range(12):
        kwargs = {key: values[rng.integers(len(values))] for key, values in choices.items()}
        try:
            out = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
        except ValueError as error:
            assert any(name in str(error) for name in names), str(error)
            continue
        images = out.images
        count = kwargs["num_views"] * (len(kwargs["prompt"]) if isinstance(kwargs["prompt"], list) else 1)
        assert len(images) == count
        if kwargs["output_type"] != "pil":
            assert np.isfinite(np.asarray(images)).all()


def test_mesh_of_an_sdf_sphere_is_coloured_and_exports_to_glb(tmp_path):
    import trimesh

    from diffusers_mv3d.mesh import export_mesh

    class Sphere(torch.nn.Module):
        def forward(self, points, features, directions, temb):
            return points.norm(dim=-1) - 0.5, torch.zeros(*points.shape[:-1], 3)

    pipe = tiny_pipeline()
    pipe.neus.field = Sphere()
    out = run(pipe, return_mesh=True, mesh_resolution=24)
    assert len(out.mesh.vertices) > 50 and len(out.mesh.faces) > 50
    radii = np.linalg.norm(out.mesh.vertices, axis=1)
    assert np.allclose(radii, 0.5, atol=0.05)
    colours = out.mesh.visual.vertex_colors
    assert colours.shape == (len(out.mesh.vertices), 4)
    path = export_mesh(out.mesh, tmp_path / "sphere.glb")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(out.mesh.vertices)


def test_meshes_are_carved_to_the_views_silhouettes():
    """A NeuS that says "sphere of radius 0.5" meets views of a grey disc of radius 0.3 on white: the mesh
    keeps to the discs (mesh_carving, the default), or is the sphere without carving."""

    class Sphere(torch.nn.Module):
        def forward(self, points, features, directions, temb):
            return points.norm(dim=-1) - 0.5, torch.zeros(*points.shape[:-1], 3)

    pipe = tiny_pipeline()
    pipe.neus.field = Sphere()
    cameras = default_cameras(4, pipe.image_size)
    origins, directions = cameras.rays()  # [V, H*W, 3]: the disc is where a ray passes within 0.3 of the origin
    miss = (origins - (origins * directions).sum(-1, keepdim=True) * directions).norm(dim=-1)
    disc = (miss < 0.3).reshape(4, 1, pipe.image_size, pipe.image_size)
    views = torch.where(disc, 0.3, 1.0).expand(-1, 3, -1, -1)
    carved = np.linalg.norm(pipe.reconstruct_mesh(views, mesh_resolution=24).vertices, axis=1)
    plain = np.linalg.norm(pipe.reconstruct_mesh(views, mesh_resolution=24, mesh_carving=False).vertices, axis=1)
    assert carved.max() < 0.38 and carved.max() > 0.25
    assert np.allclose(plain, 0.5, atol=0.05)


def test_reconstruct_mesh_of_given_views_equals_the_mesh_of_return_mesh():
    """reconstruct_mesh (§3.5 on views a user has) meshes the generated views as return_mesh does."""
    pipe = tiny_pipeline()
    out = run(pipe, num_views=3, output_type="pt", return_mesh=True, mesh_resolution=12)
    mesh = pipe.reconstruct_mesh(out.images, mesh_resolution=12)
    # the same views, up to float rounding through the [0, 1] images
    np.testing.assert_allclose(mesh.vertices, out.mesh.vertices, atol=1e-4)
    np.testing.assert_allclose(mesh.visual.vertex_colors, out.mesh.visual.vertex_colors, atol=1)
    with pytest.raises(ValueError, match="cameras must have batch shape"):
        pipe.reconstruct_mesh(out.images, default_cameras(2, pipe.image_size))
    with pytest.raises(ValueError, match=r"images\[0\]"):
        pipe.reconstruct_mesh(out.images * 2)  # outside [0, 1]


def test_meshing_runs_the_offload_hook_of_the_model_it_uses():
    """enable_model_cpu_offload moves a module on its forward; meshing calls encode / sdf instead."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    class Recording(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Recording.calls += 1
            return args, kwargs

    pipe = tiny_pipeline()
    add_hook_to_module(pipe.neus, Recording())
    Recording.calls = 0
    run(pipe, num_views=2, num_inference_steps=1)
    without_mesh = Recording.calls
    run(pipe, num_views=2, num_inference_steps=1, return_mesh=True, mesh_resolution=8)
    assert Recording.calls == 2 * without_mesh + 1  # the same steps, and once more for the mesh


# ------------------------------------------------------------------ sampling cost levers (issue 14)
def count_calls(module, sizes):
    """A forward pre-hook appending the batch size of each call's first tensor argument to ``sizes``."""
    return module.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))


def test_shared_branch_runs_the_branch_on_the_conditional_half_only(pipe):
    branch_batches, unet_batches = [], []
    handles = [count_calls(pipe.controlnet, branch_batches), count_calls(pipe.unet, unet_batches)]
    try:
        run(pipe, share_branch=True, consistency_ratio=1.0)  # every step a consistency step
        shared = (list(branch_batches), list(unet_batches))
        branch_batches.clear(), unet_batches.clear()
        run(pipe, share_branch=False, consistency_ratio=1.0)
        full = (list(branch_batches), list(unet_batches))
    finally:
        for handle in handles:
            handle.remove()
    views = 4
    # a consistency step, shared: the branch on 1 object (not 2 CFG halves) with and without NeuS, then one
    # UNet batch of the unconditional, conditional and NeuS-free conditional views
    assert shared == ([1, 1] * STEPS, [3 * views] * STEPS)
    assert full == ([2, 2] * STEPS, [2 * views, 2 * views] * STEPS)


def test_shared_branch_equals_the_full_branch_when_both_halves_see_the_same_text(pipe):
    text, _ = pipe.encode_prompt("a red chair with armrests", "cpu", do_classifier_free_guidance=False)
    same = dict(prompt=None, prompt_embeds=text, negative_prompt_embeds=text, guidance_scale=3.0)
    shared = run(pipe, share_branch=True, **same).images
    full = run(pipe, share_branch=False, **same).images
    np.testing.assert_allclose(shared, full, atol=1e-5)
    different = run(pipe, share_branch=False).images  # with the empty negative prompt they differ
    assert not np.allclose(run(pipe, share_branch=True).images, different, atol=1e-5)


@pytest.mark.parametrize("interval, renders", [(1, 4), (2, 2), (3, 2), (10, 1)])
def test_neus_renders_every_interval_steps(pipe, interval, renders):
    calls = []
    handle = count_calls(pipe.neus, calls)
    try:
        run(pipe, num_inference_steps=4, neus_interval=interval)
    finally:
        handle.remove()
    assert len(calls) == renders
    if interval > 1:
        assert not np.array_equal(run(pipe, num_inference_steps=4, neus_interval=interval).images,
                                  run(pipe, num_inference_steps=4, neus_interval=1).images)


def test_shared_noise_tiles_give_every_view_the_same_noise_mean(pipe, monkeypatch):
    import diffusers_mv3d.pipelines.pipeline_tunemv3d as module

    shared_noise = []
    original = module.share_low_frequencies
    monkeypatch.setattr(module, "share_low_frequencies",
                        lambda *args: shared_noise.append(original(*args)) or shared_noise[-1])
    independent = run(pipe).images
    np.testing.assert_array_equal(run(pipe, shared_noise_tiles=None).images, independent)
    assert not shared_noise
    shared = run(pipe, shared_noise_tiles=1).images
    (noise,) = shared_noise  # [1, V, C, h, w]
    means = noise.mean(dim=(-2, -1))
    torch.testing.assert_close(means, means[:, :1].expand_as(means), rtol=0, atol=1e-6)
    assert not np.allclose(shared, independent, atol=1e-3)
