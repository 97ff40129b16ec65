// pybind11 bindings of the rANS coders: the submodule udm_fast._C.rans (see udm_fast/coder.py
// for the documented Python API). Tensors are CPU and contiguous; every size is checked here
// before the raw pointers reach the coders.
#include "coder_bindings.h"

#include <torch/extension.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rans/rans_cpu.h"
#ifdef UDM_FAST_WITH_CUDA
#include "rans/rans_cuda.h"
#endif

namespace py = pybind11;
using udm_rans::ByteSpan;
using udm_rans::Tables;

namespace {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
                    c10::toString(t.scalar_type()));
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

std::shared_ptr<Tables> make_tables(const at::Tensor& cdf, const at::Tensor& lengths, const at::Tensor& offsets) {
  check_tensor(cdf, "quantized_cdf", at::kInt);
  check_tensor(lengths, "cdf_length", at::kInt);
  check_tensor(offsets, "offset", at::kInt);
  TORCH_CHECK_VALUE(cdf.dim() == 2, "quantized_cdf must be 2-D [rows, width], got ", cdf.sizes());
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == cdf.size(0), "cdf_length must be [", cdf.size(0),
                    "], got ", lengths.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == cdf.size(0), "offset must be [", cdf.size(0), "], got ",
                    offsets.sizes());
  return std::make_shared<Tables>(cdf.data_ptr<int32_t>(), cdf.size(0), cdf.size(1), lengths.data_ptr<int32_t>(),
                                  offsets.data_ptr<int32_t>());
}

// Row layout of `count` symbols: explicit `indexes` (same element count) or implicit rows.
udm_rans::Layout make_layout(const Tables& tables, const std::optional<at::Tensor>& indexes, int64_t count,
                             int64_t channels, int64_t per_channel) {
  udm_rans::Layout layout;
  if (indexes) {
    check_tensor(*indexes, "indexes", at::kInt);
    TORCH_CHECK_VALUE(indexes->numel() == count, "indexes must have ", count, " elements, got ", indexes->numel());
    layout.indexes = indexes->data_ptr<int32_t>();
    return layout;
  }
  TORCH_CHECK_VALUE(channels >= 1 && channels <= tables.rows(), "channels must be in [1, ", tables.rows(),
                    "] (the CDF rows), got ", channels);
  TORCH_CHECK_VALUE(per_channel >= 1, "per_channel must be positive, got ", per_channel);
  TORCH_CHECK_VALUE(count % (channels * per_channel) == 0, "symbol count ", count, " is not a multiple of channels x ",
                    "per_channel = ", channels * per_channel);
  layout.channels = channels;
  layout.per_channel = per_channel;
  return layout;
}

const float* medians_of(const Tables& tables, const std::optional<at::Tensor>& medians) {
  if (!medians) return nullptr;
  check_tensor(*medians, "medians", at::kFloat);
  TORCH_CHECK_VALUE(medians->numel() == tables.rows(), "medians must have one value per CDF row (", tables.rows(),
                    "), got ", medians->numel());
  return medians->data_ptr<float>();
}

// Symbols (int32) or values (float32, quantized against the medians).
udm_rans::Source make_source(const Tables& tables, const at::Tensor& input, const std::optional<at::Tensor>& medians) {
  udm_rans::Source source;
  if (medians) {
    check_tensor(input, "values", at::kFloat);
    source.values = input.data_ptr<float>();
    source.medians = medians_of(tables, medians);
  } else {
    check_tensor(input, "symbols", at::kInt);
    source.symbols = input.data_ptr<int32_t>();
  }
  return source;
}

ByteSpan span_of(const py::handle& object, const char* what) {
  if (!PyBytes_Check(object.ptr())) throw py::type_error(std::string(what) + " must be bytes");
  char* data = nullptr;
  Py_ssize_t size = 0;
  PyBytes_AsStringAndSize(object.ptr(), &data, &size);
  return ByteSpan{reinterpret_cast<const uint8_t*>(data), static_cast<int64_t>(size)};
}

py::bytes to_bytes(const udm_rans::CompatStream& stream) {
  py::bytes out(nullptr, stream.byte_size());
  stream.write(reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out.ptr())));
  return out;
}

py::list compat_encode(const std::shared_ptr<Tables>& tables, const at::Tensor& input,
                       const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes,
                       int64_t channels, int64_t per_channel) {
  TORCH_CHECK_VALUE(input.dim() == 2, "symbols must be [items, length], got ", input.sizes());
  const udm_rans::Source source = make_source(*tables, input, medians);
  const udm_rans::Layout layout = make_layout(*tables, indexes, input.numel(), channels, per_channel);
  TORCH_CHECK_VALUE(!indexes || source.symbols != nullptr, "values with medians need implicit rows");
  TORCH_CHECK_VALUE(indexes || input.size(1) % (channels * per_channel) == 0,
                    "stream length must be a multiple of channels x per_channel");
  std::vector<udm_rans::CompatStream> streams;
  {
    py::gil_scoped_release release;
    streams = udm_rans::compat_encode(*tables, layout, source, input.size(0), input.size(1));
  }
  py::list out;
  for (const auto& stream : streams) out.append(to_bytes(stream));
  return out;
}

at::Tensor compat_decode(const std::shared_ptr<Tables>& tables, const py::sequence& strings, int64_t length,
                         const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes,
                         int64_t channels, int64_t per_channel) {
  const int64_t items = static_cast<int64_t>(py::len(strings));
  TORCH_CHECK_VALUE(length >= 0, "length must be non-negative");
  std::vector<ByteSpan> spans;
  for (const py::handle& item : strings) spans.push_back(span_of(item, "each string"));
  const udm_rans::Layout layout = make_layout(*tables, indexes, items * length, channels, per_channel);
  TORCH_CHECK_VALUE(!indexes || !medians, "values with medians need implicit rows");
  TORCH_CHECK_VALUE(indexes || length % (channels * per_channel) == 0,
                    "stream length must be a multiple of channels x per_channel");
  at::Tensor out = at::empty({items, length}, medians ? at::kFloat : at::kInt);
  udm_rans::Sink sink;
  if (medians) {
    sink.values = out.data_ptr<float>();
    sink.medians = medians_of(*tables, medians);
  } else {
    sink.symbols = out.data_ptr<int32_t>();
  }
  {
    py::gil_scoped_release release;
    udm_rans::compat_decode(*tables, layout, sink, spans, length);
  }
  return out;
}

py::bytes compat_encode_segments(const py::list& segments) {
  std::vector<udm_rans::Segment> parts;
  std::vector<std::shared_ptr<Tables>> keep;
  for (const py::handle& item : segments) {
    auto [tables, symbols, indexes] = item.cast<std::tuple<std::shared_ptr<Tables>, at::Tensor, at::Tensor>>();
    check_tensor(symbols, "segment symbols", at::kInt);
    check_tensor(indexes, "segment indexes", at::kInt);
    TORCH_CHECK_VALUE(symbols.numel() == indexes.numel(), "segment symbols and indexes differ in size");
    parts.push_back({tables.get(), indexes.data_ptr<int32_t>(), symbols.data_ptr<int32_t>(), symbols.numel()});
    keep.push_back(tables);
  }
  udm_rans::CompatStream stream;
  {
    py::gil_scoped_release release;
    stream = udm_rans::compat_encode_segments(parts);
  }
  return to_bytes(stream);
}

py::list compat_decode_segments(const py::bytes& data, const py::list& segments) {
  std::vector<udm_rans::Segment> parts;
  std::vector<std::shared_ptr<Tables>> keep;
  py::list out;
  for (const py::handle& item : segments) {
    auto [tables, indexes] = item.cast<std::tuple<std::shared_ptr<Tables>, at::Tensor>>();
    check_tensor(indexes, "segment indexes", at::kInt);
    at::Tensor symbols = at::empty({indexes.numel()}, at::kInt);
    parts.push_back({tables.get(), indexes.data_ptr<int32_t>(), symbols.data_ptr<int32_t>(), indexes.numel()});
    keep.push_back(tables);
    out.append(symbols);
  }
  const ByteSpan span = span_of(data, "data");
  {
    py::gil_scoped_release release;
    udm_rans::compat_decode_segments(span, parts);
  }
  return out;
}

py::bytes lanes_encode(const std::shared_ptr<Tables>& tables, const at::Tensor& input,
                       const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes,
                       int64_t channels, int64_t per_channel, double lane_overhead, int64_t lanes) {
  TORCH_CHECK_VALUE(lane_overhead > 0 && lane_overhead < 1, "lane_overhead must be in (0, 1), got ", lane_overhead);
  TORCH_CHECK_VALUE(lanes >= 0, "lanes must be non-negative (0: automatic), got ", lanes);
  const udm_rans::Source source = make_source(*tables, input, medians);
  const udm_rans::Layout layout = make_layout(*tables, indexes, input.numel(), channels, per_channel);
  TORCH_CHECK_VALUE(!indexes || source.symbols != nullptr, "values with medians need implicit rows");
  const std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  std::vector<uint8_t> data;
  {
    py::gil_scoped_release release;
    data = udm_rans::lanes_encode(*tables, layout, source, input.numel(), shape,
                                  udm_rans::LaneOptions{lane_overhead, lanes});
  }
  return py::bytes(reinterpret_cast<const char*>(data.data()), data.size());
}

py::dict lanes_info(const py::bytes& data) {
  const udm_rans::LaneHeaderInfo info = udm_rans::lanes_parse(span_of(data, "data"));
  py::dict out;
  out["version"] = info.version;
  out["explicit_indexes"] = info.explicit_indexes;
  out["fingerprint"] = info.fingerprint;
  out["shape"] = info.shape;
  out["n_symbols"] = info.n_symbols;
  out["channels"] = info.channels;
  out["per_channel"] = info.per_channel;
  out["groups"] = info.n_groups;
  out["lanes_per_group"] = info.lanes_per_group;
  out["lanes"] = info.n_groups * info.lanes_per_group;
  out["group_symbols"] = info.group_symbols;
  return out;
}

at::Tensor lanes_decode(const std::shared_ptr<Tables>& tables, const py::bytes& data,
                        const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes) {
  const ByteSpan span = span_of(data, "data");
  const udm_rans::LaneHeaderInfo info = udm_rans::lanes_parse(span);
  const int32_t* index_ptr = nullptr;
  if (indexes) {
    check_tensor(*indexes, "indexes", at::kInt);
    TORCH_CHECK_VALUE(indexes->numel() == info.n_symbols, "indexes must have ", info.n_symbols, " elements, got ",
                      indexes->numel());
    index_ptr = indexes->data_ptr<int32_t>();
  }
  at::Tensor out = at::empty(info.shape, medians ? at::kFloat : at::kInt);
  udm_rans::Sink sink;
  if (medians) {
    TORCH_CHECK_VALUE(!info.explicit_indexes, "values with medians need implicit rows");
    sink.values = out.data_ptr<float>();
    sink.medians = medians_of(*tables, medians);
  } else {
    sink.symbols = out.data_ptr<int32_t>();
  }
  {
    py::gil_scoped_release release;
    udm_rans::lanes_decode(*tables, span, info, index_ptr, sink);
  }
  return out;
}

}  // namespace

void bind_coder(py::module_& m) {
  py::module_ rans =
      m.def_submodule("rans", "rANS coders: compressai-compatible streams and the parallel lanes format");
  py::class_<Tables, std::shared_ptr<Tables>>(rans, "Tables", "Validated CDF tables prepared for coding")
      .def(py::init(&make_tables), py::arg("quantized_cdf"), py::arg("cdf_length"), py::arg("offset"))
      .def_property_readonly("rows", &Tables::rows)
      .def_property_readonly("width", &Tables::width)
      .def_property_readonly("fingerprint", &Tables::fingerprint);
  rans.def("compat_encode", &compat_encode, py::arg("tables"), py::arg("input"), py::arg("medians"), py::arg("indexes"),
           py::arg("channels"), py::arg("per_channel"));
  rans.def("compat_decode", &compat_decode, py::arg("tables"), py::arg("strings"), py::arg("length"),
           py::arg("medians"), py::arg("indexes"), py::arg("channels"), py::arg("per_channel"));
  rans.def("compat_encode_segments", &compat_encode_segments, py::arg("segments"));
  rans.def("compat_decode_segments", &compat_decode_segments, py::arg("data"), py::arg("segments"));
  rans.def("lanes_encode", &lanes_encode, py::arg("tables"), py::arg("input"), py::arg("medians"), py::arg("indexes"),
           py::arg("channels"), py::arg("per_channel"), py::arg("lane_overhead"), py::arg("lanes"));
  rans.def("lanes_info", &lanes_info, py::arg("data"));
  rans.def("lanes_decode", &lanes_decode, py::arg("tables"), py::arg("data"), py::arg("medians"), py::arg("indexes"));
#ifdef UDM_FAST_WITH_CUDA
  py::class_<udm_rans::DeviceTables>(rans, "DeviceTables", "Tables copied to a CUDA device")
      .def(py::init([](const std::shared_ptr<Tables>& tables, const std::string& device) {
             return udm_rans::upload_tables(*tables, at::Device(device));
           }),
           py::arg("tables"), py::arg("device"));
  rans.def(
      "lanes_encode_cuda",
      [](const udm_rans::DeviceTables& tables, const at::Tensor& input, const std::optional<at::Tensor>& medians,
         const std::optional<at::Tensor>& indexes, int64_t channels, int64_t per_channel, double lane_overhead,
         int64_t lanes) {
        TORCH_CHECK_VALUE(lane_overhead > 0 && lane_overhead < 1, "lane_overhead must be in (0, 1)");
        py::gil_scoped_release release;
        return udm_rans::lanes_encode_cuda(tables, input, medians, indexes, channels, per_channel, lane_overhead,
                                           lanes);
      },
      py::arg("tables"), py::arg("input"), py::arg("medians"), py::arg("indexes"), py::arg("channels"),
      py::arg("per_channel"), py::arg("lane_overhead"), py::arg("lanes"));
  rans.def(
      "lanes_decode_cuda",
      [](const std::shared_ptr<Tables>& tables, const udm_rans::DeviceTables& device_tables, const at::Tensor& data,
         const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes) {
        py::gil_scoped_release release;
        return udm_rans::lanes_decode_cuda(*tables, device_tables, data, medians, indexes);
      },
      py::arg("tables"), py::arg("device_tables"), py::arg("data"), py::arg("medians"), py::arg("indexes"));
#endif
}
