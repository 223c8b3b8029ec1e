#include "data/table.hpp"

namespace moesim {

Table select_rows(const Table& t, const std::vector<char>& keep) {
  Table out;
  out.features = t.features;
  out.classes = t.classes;
  Index n = 0;
  for (char k : keep) n += k ? 1 : 0;
  out.X.resize(n, t.p());
  out.y.reserve(static_cast<std::size_t>(n));
  out.w.reserve(static_cast<std::size_t>(n));
  Index r = 0;
  for (Index i = 0; i < t.n(); ++i) {
    if (!keep[static_cast<std::size_t>(i)]) continue;
    out.X.row(r++) = t.X.row(i);
    out.y.push_back(t.y[static_cast<std::size_t>(i)]);
    out.w.push_back(t.w[static_cast<std::size_t>(i)]);
    if (!t.group.empty()) out.group.push_back(t.group[static_cast<std::size_t>(i)]);
  }
  out.rows_global = -1;  // a selection has no global row numbering of its own
  out.first = -1;
  return out;
}

}  // namespace moesim
