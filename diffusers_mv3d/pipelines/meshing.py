"""§3.5 of the TuneMV3D pipeline: meshes of the final views (or of views you already have).

:class:`MeshReconstructionMixin` is mixed into :class:`~diffusers_mv3d.TuneMV3DPipeline`; it uses the
pipeline's ``reconstructor`` (or its ``neus``), ``preprocess_image``, ``encode_views`` and
``_views_in_unit_range``.
"""

from typing import Optional

import torch

from ..cameras import Cameras, default_cameras
from ..models.views import unfold_views


class MeshReconstructionMixin:
    """``reconstruct_mesh`` and the mesh step of ``__call__(return_mesh=True)``."""

    @staticmethod
    def _onload(module: torch.nn.Module) -> None:
        """Run ``module``'s accelerate offload hook (``enable_model_cpu_offload``) by hand: meshing calls
        its ``encode`` / ``sdf`` methods, which the hook, attached to ``forward``, does not see."""
        hook = getattr(module, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(module)

    @torch.no_grad()
    def reconstruct_mesh(self, images, cameras: Optional[Cameras] = None, mesh_resolution: int = 64,
                         mesh_carving: bool = True):
        """§3.5 on views you already have: the vertex-coloured mesh of ``images`` (as ``return_mesh=True``
        makes of generated views).

        Args:
            images: the views of one object, each as :meth:`preprocess_image` accepts (a list), or a
                tensor ``[V, 3, H, W]`` in [0, 1]; at this pipeline's ``image_size``.
            cameras: their cameras, batch shape ``[V]`` (default: :func:`default_cameras` of ``V`` views).
            mesh_resolution: marching-cubes grid side.
            mesh_carving: carve to the views' silhouettes (as in ``__call__``).
        """
        views = torch.stack([self.preprocess_image(image, f"images[{i}]") for i, image in enumerate(images)])
        cameras = cameras or default_cameras(len(views), self.image_size)
        if tuple(cameras.batch_shape) != (len(views),):
            raise ValueError(f"cameras must have batch shape ({len(views)},) for {len(views)} images, "
                             f"got {tuple(cameras.batch_shape)}")
        cameras = cameras.rescale(self.image_size, self.image_size)
        latents = self.encode_views(views.to(self._execution_device))[None]
        return self._reconstruct_meshes(latents, cameras, mesh_resolution, mesh_carving)

    def _reconstruct_meshes(self, latents: torch.Tensor, cameras: Cameras, resolution: int, carving: bool = True):
        """§3.5: SDF of the final views (reconstructor on pixels, else the branch's NeuS at t = 0),
        carved to the views' silhouettes (foreground against each view's border colour) when ``carving``
        -> marching cubes -> vertex colours from the views."""
        from ..evaluation.consistency import foreground_masks
        from ..mesh import color_vertices, mesh_from_neus

        images = self._views_in_unit_range(latents)  # [B*V, 3, H, W] in [0, 1]
        batch, num_views = latents.shape[:2]
        if self.reconstructor is not None:
            model, views = self.reconstructor, unfold_views(images * 2 - 1, num_views)
            model_cameras = cameras
        else:
            model, views = self.neus, latents
            model_cameras = cameras.rescale(latents.shape[-2], latents.shape[-1])
        self._onload(model)
        context = model.encode(views.to(model.dtype), 0, model_cameras.to(device=views.device, dtype=model.dtype))
        meshes = []
        for b in range(batch):
            object_images = images[b * num_views : (b + 1) * num_views].float().cpu()
            masks = foreground_masks(object_images * 2 - 1, background="border") if carving else None
            mesh = mesh_from_neus(model, context, resolution=resolution, object_index=b, masks=masks, cameras=cameras)
            meshes.append(color_vertices(mesh, object_images, cameras))
        return meshes[0] if batch == 1 else meshes
