"""The napari layers one image is segmented with (boxes, masks, high-resolution view, ...) and small
helpers that read an image layer (its slices, its displayed transform). No model math here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.history import History
from ..engine.objects import ObjectStore

BOX_COLOR = "#ffd400"
#: Saturated colours that stand out on grey CT/MRI and on red fundus photographs (label 1 = cyan).
PALETTE = ("#00e5ff", "#ffea00", "#ff3df2", "#76ff03", "#ff9100", "#2979ff", "#ff80ab", "#00e676", "#b388ff",
           "#ff1744", "#1de9b6", "#ffc400", "#40c4ff", "#f4ff81", "#ea80fc", "#84ffff")


def label_colormap():
    """A napari label colormap cycling through :data:`PALETTE` (0 stays transparent)."""
    from napari.utils.colormaps import CyclicLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    colors = np.vstack([[0.0, 0.0, 0.0, 0.0], transform_color(list(PALETTE))])
    return CyclicLabelColormap(colors=colors, background_value=0)


@dataclass
class LayerSession:
    """Everything the widget keeps for one image layer."""

    image: Any
    labels: Any = None
    boxes: Any = None
    clicks: Any = None  # the Points layer of click prompts
    hires: Any = None
    uncertainty: Any = None
    contours: Any = None
    store: ObjectStore = field(default_factory=ObjectStore)
    history: History = field(default_factory=History)
    seen_boxes: int = 0
    seen_clicks: int = 0
    current: Any = None  # the SegObject last committed or selected
    status: str = ""  # the widget's status line for this image (the last commit, render, ...)

    @property
    def volume(self) -> bool:
        return spatial_ndim(self.image) == 3


def spatial_ndim(layer) -> int:
    return int(layer.ndim)


def base_data(layer) -> Any:
    """Full-resolution data (level 0 of a multiscale image)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_hw(layer) -> tuple[int, int]:
    shape = base_data(layer).shape
    return (int(shape[-3]), int(shape[-2])) if layer.rgb else (int(shape[-2]), int(shape[-1]))


def n_slices(layer) -> int:
    return int(base_data(layer).shape[0]) if spatial_ndim(layer) == 3 else 1


def load_slice(layer, z: int | None) -> np.ndarray:
    """The 2-D image (grey, or HxWx3/4 for RGB) of slice ``z`` (None for a 2-D layer)."""
    data = base_data(layer)
    return np.asarray(data if z is None else data[int(z)])


def unsupported_reason(layer) -> str | None:
    """Why this image layer cannot be segmented, or None. 2-D grey/RGB and 3-D stacks are supported."""
    shape = tuple(base_data(layer).shape)
    nd = spatial_ndim(layer)
    if nd > 3:
        return (f"layer '{layer.name}' has {nd} spatial dimensions (shape {shape}); only 2-D images and 3-D "
                "stacks are supported. Split the extra axes first (right-click the layer > Split Stack) and "
                "pick one channel / time point.")
    if not layer.rgb and nd == 3 and shape[-1] <= 4 < min(shape[0], shape[1]) // 4:
        return (f"layer '{layer.name}' (shape {shape}) looks like a {shape[-1]}-channel image with the channel "
                "axis last, which is not supported: mark 3-channel data as RGB (rgb=True), or split the channels "
                "(right-click > Split Stack) and segment one channel. If it really is a stack of "
                f"{shape[0]} slices, transpose it so the slices come first.")
    if min(image_hw(layer)) < 2:
        return f"layer '{layer.name}' is too small to segment (shape {shape})."
    return None


def displayed_geometry(layer) -> tuple[tuple[float, float], tuple[float, float]]:
    """The image layer's (scale, translate) along its last two (displayed) axes."""
    scale = tuple(float(v) for v in layer.scale[-2:])
    translate = tuple(float(v) for v in layer.translate[-2:])
    return scale, translate


def has_plain_transform(layer) -> bool:
    """True when the layer maps data to world by scale and translate only (no rotate, shear or affine):
    the high-resolution overlays are placed with scale/translate alone."""
    s, t = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
    points = (np.zeros(layer.ndim), np.ones(layer.ndim), np.arange(1.0, layer.ndim + 1.0))
    return all(np.allclose(np.asarray(layer.data_to_world(p), float), p * s + t) for p in points)


def slice_of_world(layer, point) -> int | None:
    """The slice index of a 3-D layer at the viewer's world ``point`` (None for 2-D)."""
    if spatial_ndim(layer) != 3:
        return None
    z = int(np.round(layer.world_to_data(np.asarray(point, dtype=float))[0]))
    return int(np.clip(z, 0, n_slices(layer) - 1))


def to_image_data(shapes_layer, image_layer, vertices: np.ndarray) -> np.ndarray:
    """Shape vertices (the Shapes layer's data coords) -> the image layer's data coords (N, image ndim)."""
    verts = np.asarray(vertices, dtype=float)
    out = []
    for v in verts:
        world = np.asarray(shapes_layer.data_to_world(v), dtype=float)
        out.append(np.asarray(image_layer.world_to_data(world), dtype=float))
    return np.asarray(out)


def label_color(labels_layer, label: int) -> np.ndarray:
    """RGBA of ``label`` in the masks layer (boxes and outlines use the same colour)."""
    if labels_layer is None:
        return np.array([1.0, 0.83, 0.0, 1.0])
    color = np.asarray(labels_layer.get_color(int(label)), dtype=float).reshape(-1)
    return color if color.size == 4 else np.array([1.0, 0.83, 0.0, 1.0])


def unwrap(obj):
    """The object behind napari's ``PublicOnlyProxy`` (plugin widgets get a proxied viewer whose layers are
    new proxy objects at every access, so identity and ``id()`` would not be stable)."""
    return getattr(obj, "__wrapped__", obj)


def same(a, b) -> bool:
    """Whether two (possibly proxied) references point to the same layer."""
    return a is not None and b is not None and unwrap(a) is unwrap(b)


def layer_alive(viewer, layer) -> bool:
    """Whether ``layer`` is still in the viewer."""
    return layer is not None and any(same(lay, layer) for lay in viewer.layers)


# ---- creating and ordering the layers of a session -------------------------------------------------------------
def find_layer(viewer, name: str, kind: type, shape: tuple | None = None):
    """An existing layer to adopt (e.g. after the widget was closed and opened again): an instance of
    ``kind`` with this name (and data shape, if given)."""
    return next((lay for lay in viewer.layers if lay.name == name and isinstance(lay, kind)
                 and (shape is None or tuple(lay.data.shape) == shape)), None)


def new_boxes_layer(viewer, image):
    """A Shapes layer over ``image`` (same transform and dimensions) for drawing box prompts."""
    width = max(1.0, 0.001 * max(image_hw(image)))
    return viewer.add_shapes(ndim=image.ndim, name=f"{image.name} boxes", scale=image.scale,
                             translate=image.translate, edge_color=BOX_COLOR, face_color="transparent",
                             edge_width=width, features={"label": np.zeros(0, int), "uid": np.zeros(0, int)})


def new_labels_layer(viewer, image):
    """An empty int32 Labels layer of ``image``'s shape and transform, in :data:`PALETTE` colours."""
    shape = tuple(base_data(image).shape[: image.ndim])
    return viewer.add_labels(np.zeros(shape, np.int32), name=f"{image.name} masks", scale=image.scale,
                             translate=image.translate, opacity=0.4, colormap=label_colormap())


def arrange_layers(viewer, sess: LayerSession) -> None:
    """Keep masks, uncertainty, the high-res view, contours, boxes and clicks above the image, in that order."""
    layers = viewer.layers
    for lay in (sess.labels, sess.uncertainty, sess.hires, sess.contours, sess.boxes, sess.clicks):
        if layer_alive(viewer, lay):
            layers.move(layers.index(lay), len(layers))


def add_layer_keeping_active(viewer, sess: LayerSession, add, *args, **kwargs):
    """``add(*args, **kwargs)`` a layer, re-order the session's layers and give the user back the layer
    they had selected (napari selects every new layer)."""
    active = viewer.layers.selection.active
    layer = add(*args, **kwargs)
    arrange_layers(viewer, sess)
    if active is not None and layer_alive(viewer, active):
        viewer.layers.selection.active = active
    return layer
