"""Volume I/O: geometry round trips (DICOM, NIfTI, MetaImage with a non-identity direction) and bad inputs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lungcad.errors import InputError
from lungcad.io import (
    Volume,
    atomic_path,
    find_dicom_series,
    index_to_world,
    read_dicom_series,
    read_volume,
    world_to_index,
    write_bytes_atomic,
    write_text_atomic,
    write_volume,
)


def write_ct_series(folder, hu, spacing=(0.7, 0.8), z0=-50.0, dz=2.5, iop=(1, 0, 0, 0, 1, 0),
                    ipp_xy=(-100.0, -120.0), modality="CT", signed=True, padding=None, reverse_instances=True,
                    series_uid=None):
    """Write ``hu`` (z, y, x) as a DICOM series; instance numbers run opposite to z when asked."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    n = hu.shape[0]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage if modality == "CT" else "1.2.840.10008.5.1.4.1.1.128"
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.Modality = "P1", modality
        ds.InstanceNumber = (n - k) if reverse_instances else (k + 1)
        pos = np.array([ipp_xy[0], ipp_xy[1], 0.0]) + (z0 + k * dz) * normal
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, (16 if signed else 12), (15 if signed else 11)
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        stored = (hu[k] + 1024).astype(np.int16 if signed else np.uint16)
        if padding is not None:
            ds.PixelPaddingValue = padding
        ds.PixelData = stored.tobytes()
        # files named in reverse order so that sorting by name would be wrong
        ds.save_as(folder / f"{n - k:03d}.dcm", enforce_file_format=True)
    return series_uid


def test_dicom_sorted_by_position_and_hu(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 400, size=(5, 12, 10)).astype(np.float32)
    write_ct_series(tmp_path / "s", hu, signed=False)
    vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, hu)
    assert vol.spacing == pytest.approx((0.8, 0.7, 2.5))
    assert vol.origin == pytest.approx((-100.0, -120.0, -50.0))
    # world position of voxel (k=3, j=2, i=4) follows the DICOM pixel -> patient formula
    assert index_to_world(vol, (3, 2, 4)) == pytest.approx((-100 + 4 * 0.8, -120 + 2 * 0.7, -50 + 3 * 2.5))


def test_dicom_oblique_orientation_round_trip(tmp_path):
    hu = np.zeros((4, 8, 8), np.float32)
    hu[2, 5, 3] = 500
    # rows run along -y, columns along +x: a rotated in-plane orientation
    iop = (0, -1, 0, 1, 0, 0)
    write_ct_series(tmp_path / "s", hu, iop=iop)
    vol = read_volume(tmp_path / "s")
    k, j, i = np.argwhere(vol.array == 500)[0]
    world = index_to_world(vol, (k, j, i))
    np.testing.assert_allclose(world_to_index(vol, world), (k, j, i), atol=1e-6)
    # sitk agrees with our geometry after a NIfTI round trip
    write_volume(vol, tmp_path / "v.nii.gz")
    img = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint((int(i), int(j), int(k))), world, atol=1e-4)


def test_duplicate_positions_keep_lower_instance(tmp_path):
    hu = np.zeros((3, 4, 4), np.float32)
    write_ct_series(tmp_path / "s", hu, reverse_instances=False)
    # add a copy of the middle slice at the same position with a higher instance number and other pixels
    ds = pydicom.dcmread(sorted((tmp_path / "s").glob("*.dcm"))[1])
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.PixelData = (np.full((4, 4), 2000, np.int16)).tobytes()
    ds.save_as(tmp_path / "s" / "dup.dcm")
    vol = read_volume(tmp_path / "s")
    assert vol.shape == (3, 4, 4)
    assert vol.array.max() == 0
    assert vol.meta["dropped_duplicates"]


def test_missing_slice_is_recorded(tmp_path):
    write_ct_series(tmp_path / "s", np.zeros((5, 4, 4), np.float32))
    files = sorted((tmp_path / "s").glob("*.dcm"))
    files[2].unlink()
    vol = read_volume(tmp_path / "s")
    assert vol.shape[0] == 4 and vol.meta["gaps"]


def test_padding_value_becomes_air(tmp_path):
    hu = np.full((2, 4, 4), -500, np.float32)
    hu[:, 0, 0] = 3071                       # stored 4095: declared as the padding value below
    write_ct_series(tmp_path / "s", hu, signed=False, padding=4095)
    vol = read_volume(tmp_path / "s")
    assert vol.array[0, 0, 0] == -1024 and vol.array[0, 1, 1] == -500


def test_nifti_affine_and_mhd_transform_matrix(tmp_path):
    arr = np.zeros((6, 7, 8), np.int16)
    arr[4, 1, 6] = 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for name in ("a.nii.gz", "a.mhd"):
        sitk.WriteImage(img, str(tmp_path / name))
        vol = read_volume(tmp_path / name)
        assert vol.direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        world = index_to_world(vol, (4, 1, 6))
        np.testing.assert_allclose(world, img.TransformIndexToPhysicalPoint((6, 1, 4)), atol=1e-4)
        out = write_volume(vol, tmp_path / ("b" + name[1:]))
        back = read_volume(out)
        assert back.spacing == pytest.approx(vol.spacing) and back.origin == pytest.approx(vol.origin)
        assert back.direction == pytest.approx(vol.direction)
        np.testing.assert_array_equal(back.array, vol.array)


def test_mhd_transform_matrix_is_transposed_direction(tmp_path):
    """DATASETS.md 1.1: TransformMatrix triplets are the axis directions, i.e. the transposed GetDirection()."""
    np.zeros((2, 3, 4), np.int16).tofile(tmp_path / "r.raw")
    (tmp_path / "r.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 0 1 0 -1 0 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\n"
        "DimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = r.raw\n")
    vol = read_volume(tmp_path / "r.mhd")
    assert vol.direction == pytest.approx((0, -1, 0, 1, 0, 0, 0, 0, 1))
    assert index_to_world(vol, (0, 0, 1)) == pytest.approx((0, 1, 0))   # index axis i points along +y


def test_truncated_dicom_is_a_clear_error(tmp_path):
    write_ct_series(tmp_path / "s", np.zeros((3, 16, 16), np.float32))
    f = sorted((tmp_path / "s").glob("*.dcm"))[1]
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(InputError, match=str(f.name)):
        read_volume(tmp_path / "s")


def test_folder_without_ct(tmp_path):
    write_ct_series(tmp_path / "pt", np.zeros((2, 4, 4), np.float32), modality="PT")
    assert find_dicom_series(tmp_path, ct_only=True) == []
    with pytest.raises(InputError, match="no CT image series"):
        read_volume(tmp_path / "pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT image series"):
        read_volume(tmp_path / "empty")


def test_unreadable_mhd(tmp_path):
    (tmp_path / "bad.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = bad.raw\n")
    with pytest.raises(InputError, match="bad.raw"):
        read_volume(tmp_path / "bad.mhd")
    (tmp_path / "bad.raw").write_bytes(b"\0" * 10)      # too short for 4x4x4 int16
    with pytest.raises(InputError, match="bad.mhd"):
        read_volume(tmp_path / "bad.mhd")
    with pytest.raises(InputError, match="unsupported input"):
        (tmp_path / "x.txt").write_text("hi")
        read_volume(tmp_path / "x.txt")


def test_volume_with_array_checks_grid():
    vol = Volume(np.zeros((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0))
    assert vol.with_array(np.ones((2, 3, 4), np.uint8)).array.dtype == np.uint8
    with pytest.raises(ValueError):
        vol.with_array(np.ones((3, 3, 4)))


def test_real_lidc_sample_geometry(realdata):
    series = [s for s in find_dicom_series(realdata / "LIDC-IDRI") if s.is_ct]
    assert len(series) == 1
    vol = read_dicom_series(series[0])
    assert vol.shape == (16, 512, 512)
    z = vol.meta["z_positions"]
    assert z == sorted(z) and z[0] == pytest.approx(-132.5) and z[-1] == pytest.approx(-95.0)
    ds = pydicom.dcmread(series[0].files[0])
    np.testing.assert_array_equal(vol.array[0], ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_atomic_write_content_and_no_temp_left(tmp_path):
    text_path = write_text_atomic(tmp_path / "a.txt", "line 1\nline 2 \u00e9\n")
    assert text_path == tmp_path / "a.txt"
    assert text_path.read_bytes() == "line 1\nline 2 \u00e9\n".encode("utf-8")  # UTF-8, no "\r\n"
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01\xff"
    with atomic_path(tmp_path / "c.png", suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".png") and tmp != tmp_path / "c.png"
        tmp.write_text("new")
    assert (tmp_path / "c.png").read_text() == "new"
    write_text_atomic(tmp_path / "a.txt", "replaced")  # an existing file is replaced
    assert (tmp_path / "a.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.png"]


def test_atomic_write_error_keeps_original_and_removes_temp(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("original")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "original"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(RuntimeError):  # a body that never created the temp file
        with atomic_path(tmp_path / "new.txt"):
            raise RuntimeError("before writing")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_atomic_write_creates_parent_folder(tmp_path):
    target = tmp_path / "x" / "y" / "z.txt"
    write_text_atomic(target, "deep")
    assert target.read_text() == "deep"
    assert [p.name for p in target.parent.iterdir()] == ["z.txt"]
